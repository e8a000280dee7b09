"""The server and CLI in `auto` mode pick up tiny weights and answer through the diffusion engine."""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("diffusers")

from server.api.app import create_app  # noqa: E402
from server.cli.main import main  # noqa: E402
from server.inputs.metadata import read  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402


@pytest.fixture(scope="module")
def diffusion_client(tiny_weights):
    settings = Settings(api_keys=["k"], weights_dir=tiny_weights, model_set="sd15")
    with TestClient(create_app(settings), headers={"x-api-key": "k"}) as client:
        wait_ready(client)
        yield client


def test_auto_mode_serves_seg_swap_through_the_diffusion_engine(diffusion_client, body, scene):
    response = diffusion_client.post("/v1/seg-swap", json={**body, "negative_prompt": "blurry", "guidance_scale": 5.0})
    assert response.status_code == 200, response.text
    assert response.headers["x-segswap-engine"] == "diffusion/sd15"
    assert Image.open(io.BytesIO(response.content)).size == scene.size
    assert read(Image.open(io.BytesIO(response.content)))["model_revisions"] == "unverified local files"  # tiny
    again = diffusion_client.post("/v1/seg-swap", json={**body, "negative_prompt": "blurry", "guidance_scale": 5.0})
    assert again.content == response.content


@pytest.mark.parametrize("engine", ["auto", "diffusion"])
def test_flux2_klein_serves_seg_swap(tiny_flux2_weights, body, scene, mask, engine):
    """auto picks the distilled klein set first; `--engine diffusion --model-set flux2-klein` names it."""
    import numpy as np

    from pipelines.imageops import grow_mask, normalize_mask

    model_set = None if engine == "auto" else "flux2-klein"
    settings = Settings(api_keys=["k"], weights_dir=tiny_flux2_weights, engine=engine, model_set=model_set)
    with TestClient(create_app(settings), headers={"x-api-key": "k"}) as client:
        wait_ready(client)
        first = client.post("/v1/seg-swap", json=body)
        again = client.post("/v1/seg-swap", json=body)
    assert first.status_code == 200, first.text
    assert first.headers["x-segswap-engine"] == "diffusion/flux2-klein"
    assert again.content == first.content
    # random weights, not black-forest-labs/FLUX.2-klein-4B @ e7b7dc27 as the manifest pins that set
    assert read(Image.open(io.BytesIO(first.content)))["model_revisions"] == "unverified local files"
    out = np.asarray(Image.open(io.BytesIO(first.content)).convert("RGB"))
    outside = ~grow_mask(normalize_mask(mask, scene.size), 5)
    assert out.shape[:2] == (scene.height, scene.width)
    assert np.array_equal(out[outside], np.asarray(scene)[outside])


def test_cli_swap_with_tiny_sdxl(tiny_weights, tmp_path, body, capsys):
    from tests.server.test_cli import swap_args

    paths = {}
    for name, field in [("main", "main_image"), ("mask", "mask_image"), ("object", "object_image")]:
        import base64

        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(base64.b64decode(body[field]))
    out = tmp_path / "out.png"
    assert main(swap_args(paths, out, "--weights", str(tiny_weights), "--steps", "10")) == 0
    assert "engine diffusion/sdxl" in capsys.readouterr().err


def test_serve_with_diffusion_and_no_weights_refuses_to_start(tmp_path, capsys):
    from server.api.live_server import free_port

    assert main(["serve", "--engine", "diffusion", "--weights", str(tmp_path), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "no model set in" in err and "segswap weights download" in err


def test_weights_make_tiny_and_verify_commands(tmp_path, capsys):
    assert main(["weights", "make-tiny", "--out", str(tmp_path)]) == 0
    for name in ("sdxl", "sd15", "flux2-klein", "flux2-klein-base"):
        assert (tmp_path / name / "base/model_index.json").is_file()
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "flux2-klein " in listing and "licence: apache-2.0" in listing
    assert main(["weights", "verify", "sd15", "--weights", str(tmp_path / "nothing")]) == 1
    assert "NOT usable" in capsys.readouterr().err


def test_a_v2_job_streams_its_progress_as_server_sent_events(diffusion_client, body):
    """QUEUED or PROCESSING, progress events with the step rising to `steps`, then COMPLETED with the output."""
    import json

    submitted = diffusion_client.post("/v2/seg-swap", json={**body, "steps": 12})
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["request_id"]
    with diffusion_client.stream("GET", f"/v2/requests/{job}/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append((lines["event"], json.loads(lines["data"])))
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "completed" and names[-2] == "status"
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] == 12
    assert all(data["total"] == 12 for name, data in events if name == "progress")
    final = events[-1][1]
    assert final["status"] == "COMPLETED" and final["output"].endswith(f"/v2/requests/{job}/output")
    assert diffusion_client.get(f"/v2/requests/{job}/output").status_code == 200
    assert diffusion_client.get("/v2/requests/nope/events").status_code == 404


def test_previews_come_with_the_progress_when_asked(diffusion_client, body):
    import base64
    import json

    job = diffusion_client.post("/v2/seg-swap", json={**body, "steps": 10}).json()["request_id"]
    with diffusion_client.stream("GET", f"/v2/requests/{job}/events?previews=1") as stream:
        text = "".join(stream.iter_text())
    previews = [
        json.loads(block.split("data: ", 1)[1])
        for block in text.strip().split("\n\n")
        if block.startswith("event: preview")
    ]
    assert previews and previews[-1]["step"] == 10
    assert [p["step"] for p in previews] == sorted(p["step"] for p in previews)
    picture = Image.open(io.BytesIO(base64.b64decode(previews[-1]["image"].split(",", 1)[1])))
    assert picture.format == "JPEG" and max(picture.size) <= 256


def test_serve_exits_with_the_reason_when_its_model_set_is_corrupt(tiny_weights, tmp_path):
    """A truncated checkpoint passes the look of a complete set but fails to load: the server must not stay up
    answering 503 forever; `segswap serve` stops and says why, on one line, non-zero."""
    import os
    import shutil
    import subprocess
    import sys

    from server.api.live_server import free_port

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights / "sd15", weights / "sd15")
    unet = weights / "sd15/base/unet/diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])
    command = [sys.executable, "-m", "server", "serve", "--engine", "diffusion", "--model-set", "sd15"]
    command += ["--weights", str(weights), "--port", str(free_port())]
    env = {name: value for name, value in os.environ.items() if not name.startswith("SEGSWAP_")}
    env["SEGSWAP_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0
    assert last.startswith("segswap: error: the engine failed to load: cannot load model set"), last
    assert "diffusion_pytorch_model.safetensors" in last
