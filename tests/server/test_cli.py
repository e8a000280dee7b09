"""The `segswap` command: offline swaps and serve's start-up checks."""

import base64
import io
import subprocess
import sys

import httpx
import pytest
from PIL import Image

from server.cli.main import main
from tests.conftest import png_bytes


@pytest.fixture()
def inputs(tmp_path, scene, mask, obj):
    paths = {}
    for name, image in [("main", scene), ("mask", mask), ("object", obj)]:
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(png_bytes(image))
    return paths


def swap_args(inputs, out, *extra):
    return [
        "swap",
        "--main",
        str(inputs["main"]),
        "--mask",
        str(inputs["mask"]),
        "--object",
        str(inputs["object"]),
        "-o",
        str(out),
        *extra,
    ]


def test_swap_writes_an_image_of_the_main_size(inputs, tmp_path, scene, capsys):
    out = tmp_path / "out.webp"
    assert main(swap_args(inputs, out, "--seed", "3", "--growmask", "2")) == 0
    image = Image.open(out)
    assert image.format == "WEBP" and image.size == scene.size
    assert "engine composite" in capsys.readouterr().err


def test_swap_matches_the_server_for_the_same_request(inputs, tmp_path, client, body):
    out = tmp_path / "out.png"
    assert main(swap_args(inputs, out, "--steps", "10", "--seed", "7")) == 0
    assert out.read_bytes() == client.post("/v1/seg-swap", json=body).content


def test_swap_base64_output(inputs, tmp_path, scene):
    out = tmp_path / "out.txt"
    assert main(swap_args(inputs, out, "--base64", "--image-format", "jpeg")) == 0
    assert Image.open(io.BytesIO(base64.b64decode(out.read_bytes()))).size == scene.size


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--steps", "5"], "--steps: input should be greater than or equal to 10"),
        (["--horizontal-repeat", "11"], "--horizontal-repeat: input should be less than or equal to 10"),
        (["--image-format", "gif"], "--image-format: input should be 'png', 'jpeg' or 'webp'"),
    ],
)
def test_swap_bad_value_is_one_line_error(inputs, tmp_path, capsys, extra, message):
    assert main(swap_args(inputs, tmp_path / "o.png", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_swap_missing_file_and_empty_mask(inputs, tmp_path, capsys, scene):
    inputs["mask"].unlink()
    assert main(swap_args(inputs, tmp_path / "o.png")) == 2
    assert "--mask: no such file" in capsys.readouterr().err
    Image.new("L", scene.size, 0).save(inputs["mask"])
    assert main(swap_args(inputs, tmp_path / "o.png")) == 2
    assert "--mask: the mask selects no pixel" in capsys.readouterr().err


def test_console_script_error_path_exits_nonzero_without_traceback(inputs, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "server", *swap_args(inputs, tmp_path / "o.png", "--growmask", "99")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--growmask: input should be less than or equal to 20" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_public_address_without_keys(monkeypatch, capsys):
    monkeypatch.delenv("SEGSWAP_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--engine", "composite"]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err


def test_state_defaults_to_the_data_directory(monkeypatch, tmp_path):
    from server.settings import Settings

    monkeypatch.setenv("SEGSWAP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SEGSWAP_WEIGHTS_DIR", raising=False)
    settings = Settings()
    assert settings.jobs_dir == tmp_path / "jobs" and settings.credits_db == tmp_path / "credits.sqlite3"
    assert settings.weights_dir == tmp_path / "weights" and settings.default_keys_file == tmp_path / "keys.toml"


def test_eval_command_writes_report_and_sheet_and_passes_on_composite(tmp_path, capsys):
    import json

    assert main(["eval", "--engine", "composite", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] and summary["engine"] == "composite"
    assert (tmp_path / "report.json").is_file() and (tmp_path / "sheet.png").is_file()


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch):
    """One process may run the CLI more than once (the test suite does, an embedding app may): a handler bound to
    the stderr of the first run would write into a closed capture after ("--- Logging error ---")."""
    import io
    import logging
    import sys

    from server.serving.logs import CurrentStderr

    handler = CurrentStderr()
    record = logging.LogRecord("segswap", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler.emit(record)
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    handler.emit(record)
    assert second.getvalue() == "hello there\n"


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("out.gif", [], "-o: segswap writes PNG, JPEG or WEBP, not .gif; name the file .png, .jpg or .webp"),
        ("out.jpg", ["--image-format", "png"], "-o: a .jpg name for a png image; name it for its format"),
    ],
)
def test_an_output_name_the_format_does_not_match_is_refused(inputs, tmp_path, capsys, name, extra, message):
    assert main(swap_args(inputs, tmp_path / name, *extra)) == 2
    assert capsys.readouterr().err == f"segswap: error: {message}\n"
    assert not (tmp_path / name).exists()


def test_the_output_suffix_chooses_the_format(inputs, tmp_path):
    assert main(swap_args(inputs, tmp_path / "out.JPG")) == 0
    assert Image.open(tmp_path / "out.JPG").format == "JPEG"
    assert main(swap_args(inputs, tmp_path / "plain")) == 0  # no suffix: the default, PNG
    assert Image.open(tmp_path / "plain").format == "PNG"


def test_an_unfetchable_url_names_the_flag_not_the_api_field(inputs, tmp_path, capsys):
    args = swap_args(inputs, tmp_path / "o.png")
    args[args.index("--main") + 1] = "http://127.0.0.1:9/scene.png"  # loopback: refused by the SSRF guard
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("segswap: error: --main: ") and "field 'main_image'" not in err


@pytest.mark.parametrize(
    ("action", "answer"),
    [
        ("list", {"data": "sd15"}),
        ("list", {"data": None}),
        ("list", {"data": [1]}),
        ("unload", {"seconds": "fast", "freed_bytes": 1}),
        ("unload", {"seconds": 1.0, "freed_bytes": "lots"}),
    ],
)
def test_the_models_command_says_so_when_a_server_answers_json_of_another_shape(monkeypatch, capsys, action, answer):
    """Not a traceback: whatever answers on that port (a proxy, another service) is not a segswap server."""
    monkeypatch.setattr(httpx, "request", lambda *args, **kwargs: httpx.Response(200, json=answer))
    assert main(["models", "--server", "http://127.0.0.1:9", action, *(["sd15"] if action == "unload" else [])]) == 2
    said = capsys.readouterr().err
    assert "segswap: error: http://127.0.0.1:9 answered" in said and "Traceback" not in said


def test_swap_refuses_a_fully_transparent_object_naming_the_flag(inputs, tmp_path, capsys):
    Image.new("RGBA", (20, 30), (200, 30, 40, 0)).save(inputs["object"])
    assert main(swap_args(inputs, tmp_path / "o.png")) == 2
    err = capsys.readouterr().err
    assert err.startswith("segswap: error: --object: the object image is fully transparent") and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("command", ["swap", "mask"])
def test_an_output_that_is_a_folder_is_refused_in_one_line_before_any_work(inputs, tmp_path, capsys, command):
    mask_args = ["mask", "--main", str(inputs["main"]), "--box", "10,10,50,40", "-o", str(tmp_path)]
    assert main(swap_args(inputs, tmp_path) if command == "swap" else mask_args) == 2
    err = capsys.readouterr().err
    assert err == f"segswap: error: -o: {tmp_path} is a folder; name the file to write in it\n"


def test_a_bad_setting_is_named_by_its_flag_or_its_environment_variable(monkeypatch, capsys):
    assert main(["serve", "--port", "99999"]) == 2
    assert (
        capsys.readouterr().err == "segswap: error: --port: input should be less than or equal to 65535 (got 99999)\n"
    )
    monkeypatch.setenv("SEGSWAP_PORT", "0")
    assert main(["serve"]) == 2
    assert (
        capsys.readouterr().err
        == "segswap: error: SEGSWAP_PORT: input should be greater than or equal to 1 (got '0')\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["models", "list", "--server", "http://127.0.0.1:9", "--key", "k2"],
        ["models", "--server", "http://127.0.0.1:9", "--key", "k2", "list"],
        ["models", "--server", "http://127.0.0.1:1", "--key", "k1", "unload", "sd15", "--server", "http://127.0.0.1:9"],
    ],
)
def test_the_models_commands_take_server_and_key_before_or_after_the_action(monkeypatch, capsys, args):
    asked = []

    def answer(method, url, headers, timeout):
        asked.append((url, headers.get("x-api-key")))
        return httpx.Response(200, json={"data": [], "seconds": 1.0, "freed_bytes": None})

    monkeypatch.setattr(httpx, "request", answer)
    assert main(args) == 0, capsys.readouterr().err
    assert asked[0][0].startswith("http://127.0.0.1:9/v1/models") and asked[0][1] == args[args.index("--key") + 1]
