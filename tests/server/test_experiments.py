"""`segswap batch` and `segswap sweep`: every output written once, resumable, on every engine, and on a server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from pipelines import CompositeEngine
from server.api.app import create_app
from server.api.live_server import live_server
from server.cli.main import main
from server.settings import Settings
from tests.conftest import noise_image, rect_mask

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def folder(tmp_path) -> Path:
    noise_image((320, 240), seed=3).save(tmp_path / "room.png")
    rect_mask((320, 240), (100, 80, 220, 200)).save(tmp_path / "mask.png")
    Image.new("RGB", (40, 60), (20, 160, 60)).save(tmp_path / "object.png")
    return tmp_path


def write_jsonl(folder: Path, count: int, **extra) -> Path:
    path = folder / "jobs.jsonl"
    with path.open("w") as handle:
        for n in range(count):
            line = {
                "main_image": "room.png",
                "mask_image": "mask.png",
                "object_image": "object.png",
                "seed": n,
                **extra,
            }
            handle.write(json.dumps(line) + "\n")
    return path


def outputs(out: Path) -> dict[str, int]:
    """Complete outputs (image and metadata), with the image's modification time."""
    return {p.stem: p.stat().st_mtime_ns for p in out.glob("*.png") if (out / f"{p.stem}.json").is_file()}


def test_a_50_line_batch_writes_every_output_then_skips_them_all(folder, capsys):
    jobs, out = write_jsonl(folder, 50), folder / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--engine", "composite"]) == 0
    written = outputs(out)
    assert len(written) == 50 and "line-00001" in written
    meta = json.loads((out / "line-00007.json").read_text())
    assert meta["parameters"]["seed"] == 6 and meta["engine"] == "composite" and meta["line"] == 7
    assert "done 50, skipped 0, failed 0" in capsys.readouterr().err
    assert main(["batch", str(jobs), "--out", str(out), "--engine", "composite"]) == 0
    assert "done 0, skipped 50, failed 0" in capsys.readouterr().err
    assert outputs(out) == written  # nothing rewritten
    assert json.loads((out / "summary.json").read_text())["skipped"] == 50


def test_killed_halfway_a_rerun_completes_without_redoing_finished_lines(folder):
    noise_image((1024, 768), seed=4).save(folder / "room.png")  # slower swaps: time to kill it halfway
    rect_mask((1024, 768), (200, 150, 800, 650)).save(folder / "mask.png")
    jobs, out = write_jsonl(folder, 50, horizontal_repeat=3), folder / "out"
    command = [sys.executable, "-m", "server", "batch", str(jobs), "--out", str(out), "--engine", "composite"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(outputs(out)) < 10 if out.exists() else True:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = outputs(out)
    assert 10 <= len(before) < 50, len(before)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"done {50 - len(before)}, skipped {len(before)}, failed 0" in result.stderr
    after = outputs(out)
    assert len(after) == 50 and all(after[name] == mtime for name, mtime in before.items())
    assert not list(out.glob("*.part"))


def test_a_failed_csv_line_is_reported_and_the_rest_go_on(folder, capsys):
    jobs = folder / "jobs.csv"
    jobs.write_text(
        "name,main_image,mask_image,object_image,seed,fashion_strength\n"
        "a,room.png,mask.png,object.png,1,0.5\n"
        "b,missing.png,mask.png,object.png,2,1\n"
        "c,room.png,mask.png,object.png,3,2\n"
        "d,room.png,mask.png,object.png,4,1\n"
    )
    out = folder / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--engine", "composite"]) == 1
    err = capsys.readouterr().err
    assert set(outputs(out)) == {"a", "d"}
    assert "failed b: line 3: main_image: no such file" in err
    assert "failed c: line 4: field 'fashion_strength': input should be less than or equal to 1" in err
    assert json.loads((out / "a.json").read_text())["parameters"]["fashion_strength"] == 0.5


def test_the_same_batch_on_a_running_server_writes_the_same_files(folder, capsys, tmp_path):
    jobs = write_jsonl(folder, 6)
    assert main(["batch", str(jobs), "--out", str(folder / "here"), "--engine", "composite"]) == 0
    settings = Settings(api_keys=["batch-key"], jobs_dir=tmp_path / "server-jobs")
    with live_server(create_app(settings, CompositeEngine())) as url:
        remote = ["batch", str(jobs), "--out", str(folder / "there"), "--server", url, "--key", "batch-key"]
        assert main([*remote, "--concurrency", "3"]) == 0
        assert "done 6, skipped 0" in capsys.readouterr().err
        wrong_key = ["batch", str(jobs), "--out", str(folder / "refused"), "--server", url, "--key", "nope"]
        assert main(wrong_key) == 1
        assert "HTTP 401" in capsys.readouterr().err
    for name in outputs(folder / "here"):
        assert (folder / "here" / f"{name}.png").read_bytes() == (folder / "there" / f"{name}.png").read_bytes()
        assert json.loads((folder / "there" / f"{name}.json").read_text())["request_id"]


def test_a_3x3_sweep_writes_nine_images_a_sheet_and_an_index(folder, capsys):
    out = folder / "sweep"
    command = [
        "sweep",
        "--main",
        str(folder / "room.png"),
        "--mask",
        str(folder / "mask.png"),
        "--object",
        str(folder / "object.png"),
        "--subject-strength",
        "0,0.5,1",
        "--fashion-strength",
        "0",
        "--fashion-strength",
        "0.5,1",
        "--seed",
        "3",
        "--out",
        str(out),
        "--engine",
        "composite",
    ]
    assert main(command) == 0
    images = sorted(out.glob("sweep-*.png"))
    assert len(images) == 9
    sheet = Image.open(out / "sheet.png")
    assert sheet.width > 3 * 256 and sheet.height > 3 * 256
    page = (out / "index.html").read_text()
    assert page.count("<figure>") == 9 and "subject_strength=0.5, fashion_strength=1.0" in page
    cells = [json.loads(p.with_suffix(".json").read_text())["varied"] for p in images]
    assert {(c["subject_strength"], c["fashion_strength"]) for c in cells} == {
        (s, f) for s in (0.0, 0.5, 1.0) for f in (0.0, 0.5, 1.0)
    }
    assert all(json.loads(p.with_suffix(".json").read_text())["parameters"]["seed"] == 3 for p in images)


def test_a_sweep_refuses_a_value_out_of_range_before_running_anything(folder, capsys):
    out = folder / "sweep"
    command = [
        "sweep",
        "--main",
        str(folder / "room.png"),
        "--mask",
        str(folder / "mask.png"),
        "--object",
        str(folder / "object.png"),
        "--steps",
        "10,5",
        "--out",
        str(out),
        "--engine",
        "composite",
    ]
    assert main(command) == 2
    assert "--steps: input should be greater than or equal to 10" in capsys.readouterr().err
    assert not out.exists()


def test_batch_and_sweep_run_on_tiny_diffusion_weights(folder, tiny_weights, capsys):
    pytest.importorskip("diffusers")
    flags = ["--engine", "diffusion", "--weights", str(tiny_weights), "--model-set", "sd15", "--device", "cpu"]
    jobs = write_jsonl(folder, 2, steps=10)
    assert main(["batch", str(jobs), "--out", str(folder / "out"), *flags]) == 0
    assert json.loads((folder / "out" / "line-00002.json").read_text())["engine"] == "diffusion/sd15"
    command = [
        "sweep",
        "--main",
        str(folder / "room.png"),
        "--mask",
        str(folder / "mask.png"),
        "--object",
        str(folder / "object.png"),
        "--steps",
        "10",
        "--seed",
        "1,2",
        "--out",
        str(folder / "sweep"),
        *flags,
    ]
    assert main(command) == 0
    assert len(list((folder / "sweep").glob("sweep-*.png"))) == 2
