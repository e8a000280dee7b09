"""LoRAs per request through the server and the CLI: the `lora` and `lora_scale` fields on v1, v2, the OpenAI
route and `segswap swap`, refused with a 400 where they cannot run, and named with their sha256 in the record."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from pipelines.models.tiny_lora import write_request_lora  # noqa: E402
from server.api.app import create_app  # noqa: E402
from server.cli.main import main  # noqa: E402
from server.inputs.metadata import read  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402
from tests.server.conftest import KEY  # noqa: E402
from tests.server.test_cli import swap_args  # noqa: E402

IMAGES = (("scene", "main_image"), ("object", "object_image"))  # the OpenAI route's image[]: scene, then object


@pytest.fixture(scope="module")
def weights(tiny_weights, tmp_path_factory):
    """A weights folder with the tiny sd15 set and two LoRAs in its loras/ folder."""
    out = tmp_path_factory.mktemp("lora-weights")
    shutil.copytree(tiny_weights / "sd15", out / "sd15")
    unet = UNet2DConditionModel.from_pretrained(out / "sd15" / "base" / "unet")
    for seed, name in enumerate(("style-a", "style-b")):
        write_request_lora(out / "sd15" / "loras" / f"{name}.safetensors", unet, "unet", seed)
    return out


@pytest.fixture(scope="module")
def served(weights):
    settings = Settings(api_keys=[KEY], weights_dir=weights, model_set="sd15")
    with TestClient(create_app(settings), headers={"x-api-key": KEY}) as client:
        wait_ready(client)
        yield client


def swapped(client, body, **fields) -> bytes:
    response = client.post("/v1/seg-swap", json={**body, **fields})
    assert response.status_code == 200, response.text
    return response.content


def test_a_lora_changes_the_bytes_and_without_it_they_come_back(served, body):
    plain = swapped(served, body)
    styled = swapped(served, body, lora="style-a")
    assert styled != plain and swapped(served, body, lora="style-b") not in (plain, styled)
    assert swapped(served, body) == plain


def test_the_record_names_the_lora_with_its_sha256_and_scale(served, body, weights):
    record = read(Image.open(io.BytesIO(swapped(served, body, lora="style-b", lora_scale=0.5))))
    digest = hashlib.sha256((weights / "sd15" / "loras" / "style-b.safetensors").read_bytes()).hexdigest()
    assert record["lora"] == {"name": "style-b", "scale": 0.5, "sha256": digest}
    assert record["parameters"]["lora"] == "style-b" and record["parameters"]["lora_scale"] == 0.5
    assert "lora" not in read(Image.open(io.BytesIO(swapped(served, body))))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"lora": "nope"}, "field 'lora': no LoRA named 'nope' in this model set (available: style-a, style-b)"),
        ({"lora": "../sd15/loras/style-a"}, "field 'lora': must be a plain file name"),
        ({"lora": "style-a", "lora_scale": 2.5}, "field 'lora_scale'"),
    ],
)
def test_an_unknown_or_path_like_lora_or_a_scale_out_of_range_is_a_400(served, body, fields, says):
    response = served.post("/v1/seg-swap", json={**body, **fields})
    assert response.status_code == 400 and response.json()["error"].startswith(says)


def test_v2_refuses_an_unknown_lora_at_submit(served, body):
    response = served.post("/v2/seg-swap", json={**body, "lora": "nope"})
    assert response.status_code == 400 and "available: style-a, style-b" in response.json()["error"]


def test_the_models_list_names_each_sets_loras_for_the_playground(served, client):
    assert [card["loras"] for card in served.get("/v1/models").json()["data"]] == [["style-a", "style-b"]]
    assert [card["loras"] for card in client.get("/v1/models").json()["data"]] == [[]]


def test_the_composite_engine_says_a_lora_needs_a_diffusion_set(client, body):
    for route in ("/v1/seg-swap", "/v2/seg-swap"):
        response = client.post(route, json={**body, "lora": "style-a"})
        assert response.status_code == 400 and "need a diffusion model set" in response.json()["error"], route


def test_v2_and_the_openai_route_take_the_same_field(served, body):
    direct = swapped(served, body, lora="style-a")
    job = served.post("/v2/seg-swap", json={**body, "lora": "style-a"}).json()["request_id"]
    for _ in range(600):
        result = served.get(f"/v2/requests/{job}").json()
        if result["status"] in ("COMPLETED", "FAILED"):
            break
    assert served.get(result["output"]).content == direct
    image = [("image[]", (f"{name}.png", base64.b64decode(body[field]), "image/png")) for name, field in IMAGES]
    image.append(("mask", ("mask.png", base64.b64decode(body["mask_image"]), "image/png")))
    form = {"prompt": "", "seed": "7", "steps": "10", "lora": "style-a"}
    edited = served.post("/v1/images/edits", data=form, files=image)
    assert edited.status_code == 200, edited.text
    plain = served.post("/v1/images/edits", data={**form, "lora": ""}, files=image)
    assert edited.json()["data"][0]["b64_json"] != plain.json()["data"][0]["b64_json"]


def test_the_cli_takes_lora_flags_and_replay_repeats_it(weights, tmp_path, body):
    paths = {}
    for name, field in [("main", "main_image"), ("mask", "mask_image"), ("object", "object_image")]:
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(base64.b64decode(body[field]))
    first, again, plain = tmp_path / "first.png", tmp_path / "again.png", tmp_path / "plain.png"
    engine = ("--weights", str(weights), "--steps", "10")
    assert main(swap_args(paths, first, *engine, "--lora", "style-a", "--lora-scale", "0.7")) == 0
    assert main(swap_args(paths, plain, *engine)) == 0
    assert main(swap_args(paths, again, *engine, "--replay", str(first))) == 0
    assert again.read_bytes() == first.read_bytes() != plain.read_bytes()
    assert read(Image.open(again))["lora"]["name"] == "style-a"


def test_batch_and_sweep_take_the_lora_fields(weights, tmp_path, body):
    for name, field in (("main", "main_image"), ("mask", "mask_image"), ("object", "object_image")):
        (tmp_path / f"{name}.png").write_bytes(base64.b64decode(body[field]))
    line = {"main_image": "main.png", "mask_image": "mask.png", "object_image": "object.png", "steps": 10}
    lines = [{**line, "name": "plain"}, {**line, "name": "styled", "lora": "style-a", "lora_scale": 0.5}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in lines))
    engine = ["--weights", str(weights)]
    assert main(["batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out"), *engine]) == 0
    styled = read(Image.open(tmp_path / "out" / "styled.png"))
    assert styled["lora"]["name"] == "style-a" and styled["lora"]["scale"] == 0.5
    assert (tmp_path / "out" / "styled.png").read_bytes() != (tmp_path / "out" / "plain.png").read_bytes()
    images = [f"--{name}" for name in ("main", "mask", "object")]
    paths = [str(tmp_path / f"{name}.png") for name in ("main", "mask", "object")]
    sweep = ["sweep", *[arg for pair in zip(images, paths, strict=True) for arg in pair], "--steps", "10"]
    assert main([*sweep, "--lora", "style-a,style-b", "--out", str(tmp_path / "sweep"), *engine]) == 0
    cells = [json.loads(path.read_text())["varied"] for path in sorted((tmp_path / "sweep").glob("sweep-*.json"))]
    assert sorted(cell["lora"] for cell in cells) == ["style-a", "style-b"]
