"""Several model sets on one server: listed at /v1/models, picked per request, checked against memory at start."""

import io
import os
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("diffusers")

from pipelines import find_model_set  # noqa: E402
from pipelines.models.memory import dtype_bytes, estimate  # noqa: E402
from server.api.app import create_app  # noqa: E402
from server.api.live_server import live_server  # noqa: E402
from server.inputs.metadata import read  # noqa: E402
from server.serving.memory_check import DoesNotFit  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402
from tests.server.conftest import REPO  # noqa: E402

KEY = "k"
SERVED = "sd15,flux2-klein,composite"


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Tiny random-weight SD1.5 and FLUX.2 [klein] sets side by side, as `segswap weights download` lays them."""
    from pipelines.models.tiny import make_tiny

    out = tmp_path_factory.mktemp("two-sets")
    make_tiny(out, sets=("sd15", "flux2-klein"))
    return out


def settings(weights, **extra) -> Settings:
    return Settings(api_keys=[KEY], weights_dir=weights, model_set=SERVED, **extra)


@pytest.fixture(scope="module")
def client(two_sets):
    with TestClient(create_app(settings(two_sets)), headers={"x-api-key": KEY}) as test_client:
        wait_ready(test_client, timeout_s=300)
        yield test_client


def test_v1_models_lists_every_served_set_in_openais_shape(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    cards = {card["id"]: card for card in listed["data"]}
    assert list(cards) == ["sd15", "flux2-klein", "composite"]
    assert all(card["object"] == "model" and card["loaded"] and card["created"] > 0 for card in cards.values())
    assert [name for name, card in cards.items() if card["default"]] == ["sd15"]
    assert (cards["sd15"]["arch"], cards["flux2-klein"]["arch"], cards["composite"]["arch"]) == (
        "sd15",
        "flux2",
        "composite",
    )
    assert cards["sd15"]["license"].startswith("creativeml-openrail-m")
    assert cards["flux2-klein"]["license"] == "apache-2.0"
    assert client.get("/v1/models", headers={"x-api-key": "wrong"}).status_code == 401


@pytest.mark.parametrize(
    ("model_set", "says"),
    [("composite", "LoRAs need a diffusion model set"), ("flux2-klein", "no LoRA named 'style' in this model set")],
)
def test_v2_checks_a_lora_against_the_set_the_request_names(client, body, model_set, says):
    response = client.post("/v2/seg-swap", json={**body, "model_set": model_set, "lora": "style"})
    assert response.status_code == 400 and says in response.json()["error"]


@pytest.mark.parametrize(
    ("model_set", "engine"),
    [(None, "diffusion/sd15"), ("flux2-klein", "diffusion/flux2-klein"), ("composite", "composite")],
)
def test_model_set_picks_the_set_that_runs_and_the_record_names_it(client, body, model_set, engine):
    sent = body if model_set is None else {**body, "model_set": model_set}
    response = client.post("/v1/seg-swap", json=sent)
    assert response.status_code == 200, response.text
    assert response.headers["x-segswap-engine"] == engine
    record = read(Image.open(io.BytesIO(response.content)))
    assert record["engine"] == engine and record["parameters"]["model_set"] == engine.removeprefix("diffusion/")


@pytest.mark.parametrize("name", ["sdxl", "no-such-set"])
def test_a_set_not_served_is_a_400_naming_the_served_sets(client, body, name):
    for route, extra in [("/v1/seg-swap", {}), ("/v2/seg-swap", {})]:
        response = client.post(route, json={**body, **extra, "model_set": name})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == (
            f"model set '{name}' is not served here; served: sd15, flux2-klein, composite (default sd15)"
        )


def test_a_v2_job_runs_on_the_set_it_names(client, body):
    submitted = client.post("/v2/seg-swap", json={**body, "model_set": "flux2-klein"}).json()
    end = time.monotonic() + 120
    while client.get(submitted["status_url"]).json()["status"] in ("QUEUED", "PROCESSING"):
        assert time.monotonic() < end
        time.sleep(0.05)
    output = client.get(f"/v2/requests/{submitted['request_id']}/output")
    assert output.status_code == 200
    assert output.headers["x-segswap-engine"] == "diffusion/flux2-klein"


def test_metrics_and_readiness_by_model_set(client, body):
    assert client.post("/v1/seg-swap", json={**body, "model_set": "composite"}).status_code == 200
    metrics = client.get("/metrics").text
    for name in ("sd15", "flux2-klein", "composite"):
        assert f'segswap_model_set_loaded{{model_set="{name}"}} 1.0' in metrics
        assert f'segswap_model_set_queue_depth{{model_set="{name}"}} 0.0' in metrics
        assert f'segswap_model_set_in_flight{{model_set="{name}"}} 0.0' in metrics
    assert 'segswap_model_set_job_seconds_count{model_set="composite"}' in metrics
    ready = client.get("/health/ready").json()
    assert ready["default_model_set"] == "sd15"
    assert {name: state["loaded"] for name, state in ready["model_sets"].items()} == dict.fromkeys(
        ["sd15", "flux2-klein", "composite"], True
    )
    assert ready["model_sets"]["flux2-klein"]["engine"] == "diffusion/flux2-klein"


def test_the_openai_sdk_picks_the_set_by_model(two_sets, tmp_path, scene, mask, obj):
    openai = pytest.importorskip("openai")
    paths = {}
    for name, image in [("scene", scene), ("object", obj), ("mask", mask)]:
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name])

    def edit(sdk, model: str):
        return sdk.images.with_raw_response.edit(
            image=[open(paths["scene"], "rb"), open(paths["object"], "rb")],  # noqa: SIM115 (the SDK reads them)
            mask=open(paths["mask"], "rb"),  # noqa: SIM115
            prompt="a green ball",
            model=model,
            extra_body={"steps": 10},
        )

    with live_server(create_app(settings(two_sets))) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [model.id for model in sdk.models.list()] == ["sd15", "flux2-klein", "composite"]
        assert edit(sdk, "flux2-klein").headers["x-segswap-engine"] == "diffusion/flux2-klein"
        assert edit(sdk, "gpt-image-1").headers["x-segswap-engine"] == "diffusion/sd15"  # OpenAI's: the default
        with pytest.raises(openai.BadRequestError, match="served: sd15, flux2-klein, composite"):
            edit(sdk, "sdxl")


def _needs(weights, name: str) -> int:
    return estimate(find_model_set(weights, name), dtype_bytes("cpu", "auto")).total


def test_a_set_that_does_not_fit_is_refused_before_anything_loads(two_sets):
    budget = _needs(two_sets, "sd15") + _needs(two_sets, "flux2-klein") - 1  # room for the first set only
    with pytest.raises(DoesNotFit, match=r"^model set flux2-klein does not fit on cpu: .* after sd15; "):
        create_app(settings(two_sets, devices=["cpu"], memory_budget_bytes=budget))
    create_app(settings(two_sets, devices=["cpu"], memory_budget_bytes=budget + 1))  # exactly enough: starts


def test_segswap_serve_refuses_a_set_that_does_not_fit_in_one_line(two_sets):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SEGSWAP_MEMORY_BUDGET_BYTES": str(_needs(two_sets, "sd15")), "SEGSWAP_DEVICES": "cpu"}
    command = ["serve", "--port", str(port), "--weights", str(two_sets), "--model-set", "sd15,flux2-klein"]
    done = subprocess.run(
        [sys.executable, "-m", "server", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("segswap: error: model set flux2-klein does not fit on cpu: it needs about "), done.stderr
    assert "left of the budget after sd15" in last


def test_several_sets_are_named_once_each_and_composite_engine_serves_only_composite(two_sets):
    from pydantic import ValidationError

    for value, engine, message in [
        ("sd15,sd15", "auto", "listed twice"),
        ("sd15,nope", "auto", "unknown model set 'nope'"),
        ("sd15,composite", "composite", "--engine composite serves only the composite set"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Settings(model_set=value, engine=engine)


def test_a_local_batch_line_naming_another_set_fails_and_the_others_run(files, tmp_path, capsys):
    import json

    from server.cli.main import main

    common = {"main_image": str(files["main"]), "mask_image": str(files["mask"]), "object_image": str(files["object"])}
    lines = [{**common, "name": "here"}, {**common, "name": "there", "model_set": "sd15"}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--engine", "composite"]) == 1
    assert "this batch runs the model set composite, not sd15" in capsys.readouterr().err
    assert (tmp_path / "out" / "here.png").is_file() and not (tmp_path / "out" / "there.png").exists()
