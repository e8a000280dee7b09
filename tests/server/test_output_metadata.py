"""Every output carries what made it (server/inputs/metadata.py): read back from PNG, JPEG and WEBP, the same
through v1, v2, OpenAI edits and the CLI, off by a setting; `segswap info` shows it and `swap --replay` repeats
it byte for byte."""

import base64
import hashlib
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipelines.engines.composite import CompositeEngine
from server.api.app import create_app
from server.cli.main import main
from server.inputs.metadata import model_revisions, read
from server.settings import Settings
from tests.conftest import png_bytes, wait_ready
from tests.server.conftest import KEY


def record_of(data: bytes) -> dict | None:
    return read(Image.open(io.BytesIO(data)))


def sha256_of_field(body: dict, field: str) -> str:
    return hashlib.sha256(base64.b64decode(body[field])).hexdigest()


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_a_swap_carries_its_parameters_inputs_seed_and_engine(client, body, image_format):
    request = {**body, "prompt": "a red cup", "fashion_strength": 0.4, "image_format": image_format}
    del request["seed"]
    response = client.post("/v1/seg-swap", json=request)
    assert response.status_code == 200
    record = record_of(response.content)
    assert record["engine"] == "composite" and record["model_revisions"] is None and record["schema"] == 1
    seed = int(response.headers["x-seed-value"])
    assert record["seed"] == record["parameters"]["seed"] == seed  # the seed used, none having been asked for
    assert record["parameters"]["prompt"] == "a red cup" and record["parameters"]["fashion_strength"] == 0.4
    assert record["parameters"]["image_format"] == image_format and record["parameters"]["steps"] == body["steps"]
    assert not {"main_image", "mask_image", "object_image", "base64"} & set(record["parameters"])
    assert record["inputs"] == {
        field: sha256_of_field(body, field) for field in ("main_image", "mask_image", "object_image")
    }


def test_the_same_request_gives_the_same_bytes_record_included(client, body):
    assert client.post("/v1/seg-swap", json=body).content == client.post("/v1/seg-swap", json=body).content


def test_a_v2_job_and_an_openai_edit_record_what_v1_records(client, body, mask):
    direct = record_of(client.post("/v1/seg-swap", json=body).content)
    job = client.post("/v2/seg-swap", json=body).json()["request_id"]
    for _ in range(200):
        if client.get(f"/v2/requests/{job}/status").json()["status"] == "COMPLETED":
            break
        time.sleep(0.05)
    output = client.get(f"/v2/requests/{job}/output")
    assert record_of(output.content) == direct
    assert output.headers["x-segswap-engine"] == "composite" and output.headers["x-seed-value"] == str(body["seed"])
    files = [
        ("image[]", ("scene.png", base64.b64decode(body["main_image"]), "image/png")),
        ("image[]", ("object.png", base64.b64decode(body["object_image"]), "image/png")),
    ]
    transparent_to_edit = Image.new("RGBA", mask.size, (0, 0, 0, 255))
    transparent_to_edit.putalpha(Image.eval(mask.convert("L"), lambda value: 255 - value))
    files.append(("mask", ("mask.png", png_bytes(transparent_to_edit), "image/png")))
    form = {"prompt": "", "n": "2", "seed": "7"}
    edit = client.post("/v1/images/edits", files=files, data=form, headers={"authorization": f"Bearer {KEY}"}).json()
    assert "data" in edit, edit
    seeds = [record_of(base64.b64decode(item["b64_json"]))["seed"] for item in edit["data"]]
    assert seeds == [7, 8]  # n images, each with its own seed


def test_output_metadata_off_leaves_the_pixels_and_no_record(body):
    app = create_app(Settings(api_keys=[KEY], output_metadata=False), CompositeEngine())
    with TestClient(app, headers={"x-api-key": KEY}) as bare:
        wait_ready(bare)
        plain = bare.post("/v1/seg-swap", json=body).content
    assert record_of(plain) is None
    app = create_app(Settings(api_keys=[KEY]), CompositeEngine())
    with TestClient(app, headers={"x-api-key": KEY}) as carrying:
        wait_ready(carrying)
        recorded = carrying.post("/v1/seg-swap", json=body).content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(plain))), np.asarray(Image.open(io.BytesIO(recorded))))


def test_a_diffusion_record_names_pinned_revisions_only_for_the_pinned_files(tmp_path):
    """The revisions of the set loaded under the engine's name, when its files were the manifest's at load; an
    engine name nothing was loaded under here vouches for nothing (tiny sets: tests/server/test_diffusion_served)."""
    from pipelines.models.revisions import note_loaded
    from tests.pipelines.test_revisions import REPO, REVISION, pinned_set

    note_loaded("diffusion/pinned-test-set", *pinned_set(tmp_path))
    assert model_revisions("diffusion/pinned-test-set") == {REPO: REVISION}
    assert model_revisions("diffusion/sdxl-never-loaded") == "unverified local files"
    assert model_revisions("composite") is None


def test_a_broken_or_foreign_record_reads_as_none():
    for packet in (b"<not xml", b"<x/>", b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY b 'c'>]><a>&b;</a>"):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, "JPEG", xmp=packet)
        assert record_of(buffer.getvalue()) is None


def swap(files, out, *extra):
    args = ["swap", "--main", str(files["main"]), "--mask", str(files["mask"]), "--object", str(files["object"])]
    return main([*args, "--engine", "composite", "-o", str(out), *extra])


def test_info_shows_the_parameters_and_replay_gives_the_same_bytes(files, tmp_path, capsys):
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert swap(files, first, "--seed", "5", "--fashion-strength", "0.25", "--growmask", "9") == 0
    assert main(["info", str(first)]) == 0
    shown = capsys.readouterr().out
    assert "engine      composite" in shown and "fashion_strength   0.25" in shown and "seed        5" in shown
    assert swap(files, again, "--replay", str(first)) == 0
    assert "warning" not in capsys.readouterr().err
    assert again.read_bytes() == first.read_bytes()


def test_replay_warns_when_an_input_differs_and_flags_win(files, tmp_path, capsys, scene):
    first, other = tmp_path / "first.png", tmp_path / "other.png"
    assert swap(files, first, "--seed", "5") == 0
    capsys.readouterr()
    Image.fromarray(255 - np.asarray(scene)).save(files["main"])
    assert swap(files, other, "--replay", str(first), "--growmask", "2") == 0
    assert "warning: --main differs from the recorded input" in capsys.readouterr().err
    record = read(Image.open(other))
    assert record["parameters"]["growmask"] == 2 and record["seed"] == 5


def test_info_on_a_file_without_a_record_says_so(files, capsys):
    assert main(["info", str(files["main"])]) == 2
    assert "carries no segswap record" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '{"parameters": [1], "inputs": {}, "engine": "composite", "segswap": "1"}',
        '{"parameters": {}, "inputs": {"main_image": 5}, "engine": "composite", "segswap": "1"}',
        '{"parameters": {}, "inputs": {}, "engine": null, "segswap": "1"}',
        "[" * 100_000,
    ],
)
def test_a_record_of_the_wrong_shape_reads_as_none(text):
    """A file can carry anything under our name: only a record shaped as segswap writes it is one."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("segswap", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", pnginfo=info)
    assert record_of(buffer.getvalue()) is None


def test_info_reads_headers_only_and_refuses_broken_files_in_a_line(tmp_path, capsys):
    """A 65000x65000 JPEG header is not decoded (it would take gigabytes); a text chunk past Pillow's limit and
    a folder are one-line errors."""
    import struct

    from PIL.PngImagePlugin import PngInfo

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.find(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", 65000, 65000)
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    info = PngInfo()
    info.add_itxt("comment", "A" * 3_000_000, zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "zip.png", pnginfo=info)
    for name, message in [("huge.jpg", "carries no segswap record"), ("zip.png", "not a readable"), ("", "folder")]:
        assert main(["info", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err


def test_a_long_unicode_prompt_still_fits_a_jpeg(client, body):
    """4000 four-byte characters in both prompts: the record goes in as UTF-8 and fits JPEG's XMP segment."""
    request = {**body, "image_format": "jpeg", "prompt": "😀" * 4000, "negative_prompt": "😀" * 4000}
    response = client.post("/v1/seg-swap", json=request)
    assert response.status_code == 200 and record_of(response.content)["parameters"]["prompt"] == "😀" * 4000


def test_a_record_too_large_for_a_jpeg_is_left_out_not_an_error(caplog):
    from server.inputs.metadata import save_options

    with caplog.at_level("WARNING", logger="segswap"):
        assert save_options("jpeg", {"parameters": {"prompt": "x" * 70_000}}) == {}
    assert "does not fit a JPEG" in caplog.text
    assert "xmp" in save_options("webp", {"parameters": {"prompt": "x" * 70_000}})


def test_replay_takes_no_image_from_the_record(files, tmp_path, capsys):
    """A record naming an image field (ours never does) must not stand in for a missing flag."""
    from PIL.PngImagePlugin import PngInfo

    first = tmp_path / "first.png"
    assert swap(files, first, "--seed", "5") == 0
    record = read(Image.open(first))
    record["parameters"]["mask_image"] = "/etc/passwd"
    info = PngInfo()
    info.add_itxt("segswap", json.dumps(record))
    Image.open(first).save(tmp_path / "crafted.png", pnginfo=info)
    args = ["swap", "--replay", str(tmp_path / "crafted.png"), "--main", str(files["main"])]
    capsys.readouterr()
    assert main([*args, "--object", str(files["object"]), "-o", str(tmp_path / "r.png")]) == 2
    assert "--mask is required" in capsys.readouterr().err


def test_a_c2pa_certificate_that_cannot_sign_stops_the_cli_before_any_work(files, tmp_path, monkeypatch, capsys):
    pytest.importorskip("c2pa")
    (tmp_path / "junk.pem").write_text("not a certificate")
    monkeypatch.setenv("SEGSWAP_C2PA_CERT", str(tmp_path / "junk.pem"))
    monkeypatch.setenv("SEGSWAP_C2PA_KEY", str(tmp_path / "junk.pem"))
    assert swap(files, tmp_path / "out.png") == 2
    assert "cannot sign" in capsys.readouterr().err and not (tmp_path / "out.png").exists()


def test_info_escapes_control_characters_and_reads_only_regular_files(tmp_path, capsys, monkeypatch):
    """A crafted record's ANSI escapes (clear screen, set the title) are printed escaped, never obeyed; /dev/zero
    and a file past the size cap are one-line errors, not gigabytes read."""
    import json

    from PIL.PngImagePlugin import PngInfo

    from server.cli import info as info_command

    hostile = "\x1b[2J\x1b]0;owned\x07"
    record = {
        "engine": f"composite{hostile}",
        "segswap": "1.0",
        "seed": 1,
        "inputs": {f"main_image{hostile}": "ab" * 32},
        "parameters": {"prompt": f"a {hostile} table", f"mode{hostile}": "object"},
    }
    pnginfo = PngInfo()
    pnginfo.add_itxt("segswap", json.dumps(record))
    Image.new("RGB", (8, 8)).save(tmp_path / "crafted.png", pnginfo=pnginfo)
    assert main(["info", str(tmp_path / "crafted.png")]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown
    assert "composite\\x1b[2J\\x1b]0;owned\\x07" in shown and "a \\x1b[2J" in shown
    assert main(["info", str(tmp_path / "crafted.png"), "--json"]) == 0
    assert "\x1b" not in capsys.readouterr().out
    assert main(["info", "/dev/zero"]) == 2
    assert "/dev/zero is not a regular file" in capsys.readouterr().err
    monkeypatch.setattr(info_command, "MAX_FILE_BYTES", 1000)
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    assert main(["info", str(tmp_path / "big.png")]) == 2
    assert "is larger than" in capsys.readouterr().err
