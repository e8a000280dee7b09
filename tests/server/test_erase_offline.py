"""mode=erase offline: `segswap erase`, `segswap swap --mode erase` without --object, replay and info of an erase,
and batch and sweep lines that erase with no object."""

import json

import numpy as np
from PIL import Image

from pipelines import CompositeEngine
from pipelines.imageops import grow_mask, normalize_mask
from server.api.app import create_app
from server.api.live_server import live_server
from server.cli.main import main
from server.inputs.metadata import read
from server.settings import Settings

GROWMASK = 3


def erase(files, out, *extra, command="erase") -> int:
    args = [command, "--main", str(files["main"]), "--mask", str(files["mask"]), "--growmask", str(GROWMASK)]
    return main([*args, "--engine", "composite", "--seed", "7", "-o", str(out), *extra])


def assert_erased(path, scene: Image.Image, mask: Image.Image) -> None:
    grown = grow_mask(normalize_mask(mask, scene.size), GROWMASK)
    out, before = np.asarray(Image.open(path).convert("RGB")), np.asarray(scene)
    assert np.array_equal(out[~grown], before[~grown])
    assert (out[grown] != before[grown]).any(axis=-1).mean() > 0.5


def test_erase_and_swap_mode_erase_write_the_same_image_without_an_object(files, tmp_path, scene, mask, capsys):
    by_erase, by_swap = tmp_path / "erase.png", tmp_path / "swap.png"
    assert erase(files, by_erase, "--prompt", "a plain wall") == 0
    assert "engine composite" in capsys.readouterr().err
    assert_erased(by_erase, scene, mask)
    assert erase(files, by_swap, "--prompt", "a plain wall", "--mode", "erase", command="swap") == 0
    assert by_swap.read_bytes() == by_erase.read_bytes()
    record = read(Image.open(by_erase))
    assert set(record["inputs"]) == {"main_image", "mask_image"} and record["parameters"]["mode"] == "erase"


def test_swap_without_an_object_says_it_is_needed_unless_erasing(files, tmp_path, capsys):
    assert erase(files, tmp_path / "out.png", command="swap") == 2
    assert "segswap: error: --object is required unless mode is erase" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_erase_takes_no_object_flag(files, tmp_path, capsys):
    assert erase(files, tmp_path / "out.png", "--object", str(files["object"])) == 2
    assert "unrecognized arguments: --object" in capsys.readouterr().err


def test_an_erase_replays_byte_for_byte_and_info_shows_it(files, tmp_path, capsys):
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert erase(files, first, "--seed", "11") == 0
    assert main(["info", str(first)]) == 0
    shown = capsys.readouterr().out
    assert "mode               erase" in shown and "object_image" not in shown
    replay = ["swap", "--replay", str(first), "--main", str(files["main"]), "--mask", str(files["mask"])]
    assert main([*replay, "--engine", "composite", "-o", str(again)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert again.read_bytes() == first.read_bytes()


def test_a_batch_line_that_erases_needs_no_object(files, tmp_path, scene, mask, capsys):
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"name": "erased", "main_image": "main.png", "mask_image": "mask.png", "mode": "erase", "growmask": GROWMASK},
        {"name": "refused", "main_image": "main.png", "mask_image": "mask.png"},
    ]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--engine", "composite"]) == 1
    assert "failed refused: line 2: field 'object_image' is required unless mode is erase" in capsys.readouterr().err
    assert_erased(tmp_path / "out" / "erased.png", scene, mask)
    parameters = json.loads((tmp_path / "out" / "erased.json").read_text())["parameters"]
    assert parameters["mode"] == "erase" and parameters["object_image"] is None
    settings = Settings(api_keys=["batch-key"], jobs_dir=tmp_path / "server-jobs")
    with live_server(create_app(settings, CompositeEngine())) as url:
        remote = ["batch", str(jobs), "--out", str(tmp_path / "there"), "--server", url, "--key", "batch-key"]
        assert main(remote) == 1
    assert (tmp_path / "there" / "erased.png").read_bytes() == (tmp_path / "out" / "erased.png").read_bytes()


def test_a_sweep_of_erases_needs_no_object_and_one_of_swaps_does(files, tmp_path, scene, mask, capsys):
    command = ["sweep", "--main", str(files["main"]), "--mask", str(files["mask"]), "--engine", "composite"]
    out = tmp_path / "sweep"
    erases = [*command, "--mode", "erase", "--growmask", str(GROWMASK), "--seed", "1,2", "--out", str(out)]
    assert main(erases) == 0
    images = sorted(out.glob("sweep-*.png"))
    assert len(images) == 2
    for image in images:
        assert_erased(image, scene, mask)
    assert main([*command, "--mode", "object,erase", "--out", str(tmp_path / "mixed")]) == 2
    assert "--object is required unless mode is erase" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()
