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
from tests.server.conftest import run_cli

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


def test_jsonl_lines_that_the_http_route_refuses_fail_alone_and_the_rest_go_on(folder, capsys):
    """A number too long to read and a name given twice: the line fails with the route's sentence, no traceback."""
    good = '{"name": "ok", "main_image": "room.png", "mask_image": "mask.png", "object_image": "object.png"}'
    lines = [
        good,
        '{"main_image": "room.png", "mask_image": "mask.png", "object_image": "object.png", "seed": '
        + "9" * 5000
        + "}",
        '{"main_image": "room.png", "mask_image": "mask.png", "object_image": "object.png", "seed": 1, "seed": 2}',
    ]
    (folder / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    out = folder / "out"
    assert main(["batch", str(folder / "jobs.jsonl"), "--out", str(out), "--engine", "composite"]) == 1
    err = capsys.readouterr().err
    assert "line 2: field 'seed': a number of more than 4300 digits is too long to read" in err, err
    assert "line 3: 'seed' is given twice in one JSON object; send it once" in err, err
    assert set(outputs(out)) == {"ok"} and "Traceback" not in err


def test_a_batch_line_with_a_fully_transparent_object_fails_naming_the_field(folder, capsys):
    Image.new("RGBA", (40, 60), (20, 160, 60, 0)).save(folder / "clear.png")
    jobs = folder / "jobs.csv"
    jobs.write_text("name,main_image,mask_image,object_image\na,room.png,mask.png,clear.png\n")
    assert main(["batch", str(jobs), "--out", str(folder / "out"), "--engine", "composite"]) == 1
    assert "failed a: line 2: object_image: the object image is fully transparent" in capsys.readouterr().err


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


def write_lines(folder: Path, *lines: dict) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def a_line(name: str, **fields) -> dict:
    return {"name": name, "main_image": "room.png", "mask_image": "mask.png", "object_image": "object.png", **fields}


def test_a_name_too_long_or_reserved_fails_its_line_and_the_summary_stays_the_batchs(folder, capsys):
    jobs = write_lines(folder, a_line("a" * 300), a_line("Summary"), a_line("fine"))
    out = folder / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--engine", "composite"]) == 1
    err = capsys.readouterr().err
    assert "failed line-00001: line 1: the name is 300 characters long, more than 200" in err
    assert "failed Summary: line 2: the name 'Summary' is reserved for the batch's summary.json" in err
    assert sorted(path.name for path in out.iterdir()) == ["fine.json", "fine.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 1 and len(summary["failed"]) == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_an_image_path_that_is_a_device_a_fifo_or_too_large_fails_its_line_at_once(folder):
    os.mkfifo(folder / "pipe.png")
    noise_image((800, 600), seed=5).save(folder / "big.png")  # about 1.4 MB, over the cap set below
    jobs = write_lines(
        folder,
        a_line("zero", main_image="/dev/zero"),
        a_line("pipe", object_image="pipe.png"),
        a_line("big", main_image="big.png"),
        a_line("fine"),
    )
    out = folder / "out"
    result = run_cli(
        "batch", str(jobs), "--out", str(out), "--engine", "composite", env={"SEGSWAP_MAX_BODY_BYTES": "500000"}
    )
    assert result.returncode == 1, result.stderr
    assert "failed zero: line 1: main_image: /dev/zero is not a regular file" in result.stderr
    assert f"failed pipe: line 2: object_image: {folder / 'pipe.png'} is not a regular file" in result.stderr
    assert f"failed big: line 3: main_image: {folder / 'big.png'} is larger than 500000 bytes" in result.stderr
    assert set(outputs(out)) == {"fine"} and "Traceback" not in result.stderr


def test_a_batch_line_may_select_its_region_by_box_or_points_as_the_api_does(folder, capsys):
    from pipelines.evaluation.selection import load_selections
    from pipelines.masks import GrabCutSegmenter, Selector, select_mask

    flower = next(case for case in load_selections() if case.name == "flower-box")
    flower.image.save(folder / "flower.png")
    box = list(flower.selector.box)
    select_mask(flower.image, Selector.build(box=box), GrabCutSegmenter()).save(folder / "selected.png")
    points = [[300, 220, 1], [250, 250, 1]]
    jobs = write_lines(
        folder,
        {"name": "boxed", "main_image": "flower.png", "box": box, "object_image": "object.png", "seed": 1},
        {
            "name": "painted",
            "main_image": "flower.png",
            "mask_image": "selected.png",
            "object_image": "object.png",
            "seed": 1,
        },
        {"name": "pointed", "main_image": "flower.png", "points": points, "object_image": "object.png"},
    )
    out = folder / "out"
    assert main(["batch", str(jobs), "--out", str(out), "--engine", "composite", "--segmenter", "grabcut"]) == 0
    assert set(outputs(out)) == {"boxed", "painted", "pointed"}, capsys.readouterr().err
    pixels = {name: Image.open(out / f"{name}.png").tobytes() for name in ("boxed", "painted")}
    assert pixels["boxed"] == pixels["painted"]
    assert json.loads((out / "boxed.json").read_text())["parameters"]["box"] == box
    assert json.loads((out / "pointed.json").read_text())["parameters"]["points"] == points


@pytest.mark.parametrize("command", ["batch", "sweep"])
def test_an_out_folder_that_cannot_be_written_is_a_one_line_error(folder, capsys, command):
    jobs = write_jsonl(folder, 1)
    images = [
        "--main",
        str(folder / "room.png"),
        "--mask",
        str(folder / "mask.png"),
        "--object",
        str(folder / "object.png"),
    ]
    start = ["batch", str(jobs)] if command == "batch" else ["sweep", *images, "--seed", "1,2"]
    for out, says in [(folder / "room.png", "is a file, not a folder"), (folder / "room.png" / "x", "cannot write to")]:
        assert main([*start, "--out", str(out), "--engine", "composite"]) == 2
        err = capsys.readouterr().err
        assert says in err and err.startswith("segswap: error: --out: ") and err.count("\n") == 1


def test_a_jobs_file_that_is_not_text_is_a_one_line_error(folder, capsys):
    assert main(["batch", str(folder / "room.png"), "--out", str(folder / "out")]) == 2
    assert capsys.readouterr().err == f"segswap: error: {folder / 'room.png'} is not a UTF-8 text file (JSONL or CSV)\n"


def sweep_args(folder: Path, out: Path, *fields: str) -> list[str]:
    images = [
        "--main",
        str(folder / "room.png"),
        "--mask",
        str(folder / "mask.png"),
        "--object",
        str(folder / "object.png"),
    ]
    return ["sweep", *images, *fields, "--out", str(out), "--engine", "composite"]


def test_a_grid_past_max_cells_is_refused_with_its_count_before_anything_runs(folder, capsys):
    out = folder / "sweep"
    seeds = ",".join(str(n) for n in range(17))
    assert main(sweep_args(folder, out, "--seed", seeds, "--growmask", seeds)) == 2
    err = capsys.readouterr().err
    assert "the grid has 289 cells (17 x 17), more than --max-cells 256" in err and not out.exists()
    assert main(sweep_args(folder, out, "--seed", "1,2", "--growmask", "0,1", "--max-cells", "3")) == 2
    assert "the grid has 4 cells (2 x 2), more than --max-cells 3" in capsys.readouterr().err and not out.exists()
    assert main(sweep_args(folder, out, "--seed", "1,2", "--growmask", "0,1", "--max-cells", "4")) == 0
    assert len(list(out.glob("sweep-*.png"))) == 4


@pytest.mark.parametrize(
    "field,values,message",
    [
        ("--seed", "1,abc", "--seed: each value must be a whole number (got 'abc')"),
        ("--fashion-strength", "0.5,high", "--fashion-strength: each value must be a number (got 'high')"),
    ],
)
def test_a_sweep_value_of_the_wrong_kind_is_named_with_its_flag(folder, capsys, field, values, message):
    out = folder / "sweep"
    assert main(sweep_args(folder, out, field, values)) == 2
    assert capsys.readouterr().err == f"segswap: error: {message}\n" and not out.exists()


def test_a_grid_of_ten_billion_cells_is_refused_without_being_built(folder):
    values = [",".join(str(n) for n in range(count)) for count in (1000, 91, 91, 21)]
    strengths = ",".join(f"{n / 1000:g}" for n in range(1000))
    fields = ["--seed", values[0], "--image-quality", values[1], "--steps", values[2], "--growmask", values[3]]
    result = run_cli(*sweep_args(folder, folder / "sweep", *fields, "--subject-strength", strengths))
    assert result.returncode == 2
    assert "the grid has 173901000000 cells (1000 x 91 x 91 x 21 x 1000)" in result.stderr
    assert not (folder / "sweep").exists()


def test_a_grid_larger_than_a_sheet_is_split_over_several_sheets(folder, capsys):
    out = folder / "sweep"
    seeds = ",".join(str(n) for n in range(12))
    assert main(sweep_args(folder, out, "--seed", seeds, "--growmask", "0,2")) == 0
    assert not (out / "sheet.png").exists()
    sheets = [Image.open(out / name) for name in ("sheet-01.png", "sheet-02.png")]
    assert sheets[0].height > 10 * 256 > sheets[1].height > 2 * 256  # 10 rows, then the other 2
    assert sheets[0].width == sheets[1].width < 3 * 264 + 150 + 8
    assert not (out / "sheet-03.png").exists()
    assert (out / "index.html").read_text().count("<figure>") == 24


def test_a_sweep_selects_its_region_by_box_or_points_without_a_mask(folder, capsys):
    from pipelines.evaluation.selection import load_selections

    flower = next(case for case in load_selections() if case.name == "flower-box")
    flower.image.save(folder / "flower.png")
    box = ",".join(str(v) for v in flower.selector.box)
    images = ["--main", str(folder / "flower.png"), "--object", str(folder / "object.png")]
    common = ["--engine", "composite", "--segmenter", "grabcut"]
    assert main(["swap", *images, "--box", box, "--seed", "2", "-o", str(folder / "one.png"), *common]) == 0
    assert main(["sweep", *images, "--box", box, "--seed", "1,2", "--out", str(folder / "boxed"), *common]) == 0
    second = folder / "boxed" / "sweep-0002.png"
    assert Image.open(second).tobytes() == Image.open(folder / "one.png").tobytes()
    assert json.loads(second.with_suffix(".json").read_text())["parameters"]["box"] == [
        float(v) for v in box.split(",")
    ]
    points = ["--points", "300,220,1;250,250,1"]
    assert main(["sweep", *images, *points, "--seed", "1,2", "--out", str(folder / "pointed"), *common]) == 0
    cell = json.loads((folder / "pointed" / "sweep-0001.json").read_text())
    assert cell["parameters"]["points"] == [[300, 220, 1], [250, 250, 1]]


WRITE_UNDER_A_SIZE_CAP = """
import json, resource, signal, sys
from pathlib import Path
from server.experiments.outputs import write_output

out, image_bytes, json_bytes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap then fails with EFBIG, part-way
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
write_output(out, "cell", "png", b"\\x89PNG" + bytes(image_bytes), {"blob": "x" * json_bytes})
"""


@pytest.mark.parametrize(
    ("image_bytes", "json_bytes", "image_left"),
    [(300_000, 10, False), (1_000, 300_000, True)],
    ids=["the-image-write-fails", "the-json-write-fails-after-the-image"],
)
def test_an_output_whose_writing_fails_part_way_is_never_taken_for_complete(
    tmp_path, image_bytes, json_bytes, image_left
):
    """The file system refuses a write past 100 kB half-way through (RLIMIT_FSIZE): the JSON must come last (its
    presence means complete) and neither file may ever be seen half-written under its name."""
    from server.experiments.outputs import is_complete, write_output

    script = [sys.executable, "-c", WRITE_UNDER_A_SIZE_CAP, str(tmp_path), str(image_bytes), str(json_bytes)]
    result = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert not (tmp_path / "cell.json").exists()
    assert (tmp_path / "cell.png").exists() == image_left
    if image_left:
        assert (tmp_path / "cell.png").stat().st_size == 4 + image_bytes  # whole, never a part
    assert not is_complete(tmp_path, "cell", "png")
    write_output(tmp_path, "cell", "png", b"\x89PNG" + bytes(image_bytes), {"blob": "x" * json_bytes})  # a re-run
    assert is_complete(tmp_path, "cell", "png") and json.loads((tmp_path / "cell.json").read_text())["blob"]
