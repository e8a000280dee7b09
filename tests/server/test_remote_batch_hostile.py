"""`segswap batch --server` against a hostile server: the key goes to the configured server only, and every field
of its answers is untrusted (a one-line failure for that line, nothing written)."""

from __future__ import annotations

import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from server.cli.main import main
from tests.conftest import noise_image, rect_mask
from tests.server.conftest import run_cli


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


class Listener:
    """A loopback HTTP server; `answers[(method, path)]` is (status, content type, body); every request is kept
    with its headers."""

    def __init__(self, answers: dict | None = None):
        self.answers, self.requests = answers or {}, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.requests.append((method, self.path, dict(self.headers)))
                status, kind, body = outer.answers.get((method, self.path), (404, "text/plain", b"no"))
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._answer("GET")

            def do_POST(self):  # noqa: N802
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def js(data) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps(data).encode()


def a_server(request_id: str = "abc123", *, submit=None, result=None, output=None) -> dict:
    done = {"request_id": request_id, "status": "COMPLETED", "metrics": {"inference_time": 0.1}}
    return {
        ("POST", "/v2/seg-swap"): submit or js({"request_id": request_id, "status": "QUEUED"}),
        ("GET", f"/v2/requests/{request_id}/status"): js(done),
        ("GET", f"/v2/requests/{request_id}"): result or js({**done, "seed": 7, "output": "/elsewhere"}),
        ("GET", f"/v2/requests/{request_id}/output"): output or (200, "image/png", png()),
    }


@pytest.fixture()
def jobs(tmp_path) -> Path:
    noise_image((64, 48), seed=1).save(tmp_path / "room.png")
    rect_mask((64, 48), (10, 10, 40, 30)).save(tmp_path / "mask.png")
    Image.new("RGB", (10, 10), (200, 20, 20)).save(tmp_path / "object.png")
    line = {"main_image": "room.png", "mask_image": "mask.png", "object_image": "object.png", "name": "one"}
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps(line) + "\n")
    return path


def run(jobs: Path, url: str, capsys) -> tuple[int, str, list[str]]:
    out = jobs.parent / "out"
    code = main(["batch", str(jobs), "--out", str(out), "--server", url, "--key", "secret-key"])
    written = sorted(p.name for p in out.iterdir() if p.name != "summary.json") if out.exists() else []
    return code, capsys.readouterr().err, written


def test_the_output_url_a_server_names_is_never_followed_and_the_key_goes_nowhere_else(jobs, capsys):
    thief = Listener({("GET", "/steal"): (200, "image/png", png())})
    honest_path = a_server(
        result=js({"request_id": "abc123", "status": "COMPLETED", "seed": 7, "output": f"{thief.url}/steal"})
    )
    server = Listener(honest_path)
    try:
        code, err, written = run(jobs, server.url, capsys)
    finally:
        server.close(), thief.close()
    assert code == 0 and written == ["one.json", "one.png"], err
    assert thief.requests == []  # neither the request nor the key reached the other host
    assert all(headers.get("x-api-key") == "secret-key" for _, _, headers in server.requests)


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        (a_server("../../etc"), "the server answered an unusable request id '../../etc'"),
        (a_server(submit=js({"status": "QUEUED"})), "the server's answer has no usable 'request_id'"),
        (a_server(submit=(200, "text/html", b"<html>hello</html>")), "the server's answer is not JSON (HTTP 200)"),
        (a_server(submit=js(["abc123"])), "the server's answer is not a JSON object"),
        (a_server(result=js({"status": "COMPLETED"})), "the server's answer has no usable 'seed'"),
        (a_server(output=(200, "image/png", b"<html>not an image</html>")), "the server's output is not an image"),
        (a_server(output=(302, "text/plain", b"")), "HTTP 302"),
        (a_server(submit=(500, "text/plain", b"\x1b[2J\x1b]0;pwned\x07oops")), "HTTP 500:  [2J ]0;pwned oops"),
    ],
)
def test_every_field_of_a_server_answer_is_untrusted(jobs, capsys, answers, says):
    server = Listener(answers)
    try:
        code, err, written = run(jobs, server.url, capsys)
    finally:
        server.close()
    assert code == 1 and written == []
    assert f"failed one: line 1: {says}" in err and "Traceback" not in err
    assert "\x1b" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_image_paths_are_read_as_a_local_batch_reads_them_and_the_http_client_is_quiet(jobs):
    """/dev/zero filled the memory and a FIFO blocked for ever; every request was an httpx INFO line."""
    os.mkfifo(jobs.parent / "pipe.png")
    good = json.loads(jobs.read_text())
    lines = [
        good,
        {**good, "name": "zero", "main_image": "/dev/zero"},
        {**good, "name": "pipe", "mask_image": "pipe.png"},
    ]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    server = Listener(a_server())
    try:
        command = ["batch", str(jobs), "--out", str(jobs.parent / "out"), "--server", server.url, "--key", "k"]
        result = run_cli(*command)
    finally:
        server.close()
    assert result.returncode == 1, result.stderr
    assert "failed zero: line 2: main_image: /dev/zero is not a regular file" in result.stderr
    assert f"failed pipe: line 3: mask_image: {jobs.parent / 'pipe.png'} is not a regular file" in result.stderr
    assert [path for method, path, _ in server.requests if method == "POST"] == ["/v2/seg-swap"]  # the good line
    assert (jobs.parent / "out" / "one.png").is_file()
    assert "httpx" not in result.stderr and "HTTP Request" not in result.stderr
