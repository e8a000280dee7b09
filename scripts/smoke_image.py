"""Serve and swap once: the Docker image's smoke check (the `smoke` stage; scripts/check_image.sh builds it).

    python3 scripts/smoke_image.py

Starts `segswap serve` on the composite engine with an API key, a fresh data directory and a free loopback port,
waits for /health/ready, sends the README's quick-start swap (examples/, which install.sh draws) and checks the
answer is a PNG of the room's size; then SIGTERM, and the server must drain and exit 0. Exits non-zero otherwise.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY = "smoke-key"
READY_WITHIN_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"smoke: the server exited with {server.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"smoke: /health/ready not 200 within {READY_WITHIN_S} s")


def swap_example(url: str) -> None:
    files = {
        name: (f"{name}.png", (EXAMPLES / f"{stem}.png").read_bytes(), "image/png")
        for name, stem in [("main_image", "room"), ("mask_image", "room_mask"), ("object_image", "table")]
    }
    answer = httpx.post(
        f"{url}/v1/seg-swap", headers={"x-api-key": KEY}, files=files, data={"growmask": "8"}, timeout=300
    )
    if answer.status_code != 200:
        raise SystemExit(f"smoke: /v1/seg-swap answered {answer.status_code}: {answer.text[:500]}")
    if answer.headers.get("content-type") != "image/png":
        raise SystemExit(f"smoke: /v1/seg-swap answered {answer.headers.get('content-type')}, not image/png")
    result = Image.open(io.BytesIO(answer.content))
    result.load()
    room = Image.open(EXAMPLES / "room.png")
    if result.size != room.size:
        raise SystemExit(f"smoke: the swap is {result.size}, the room {room.size}")
    print(f"smoke: /v1/seg-swap answered a {result.size[0]}x{result.size[1]} PNG, {len(answer.content)} bytes")


def main() -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="segswap-smoke-") as data_dir:
        env = os.environ | {
            "SEGSWAP_ENGINE": "composite",
            "SEGSWAP_HOST": "127.0.0.1",
            "SEGSWAP_PORT": str(port),
            "SEGSWAP_API_KEYS": KEY,
            "SEGSWAP_DATA_DIR": data_dir,
        }
        started = time.monotonic()
        server = subprocess.Popen(["segswap", "serve"], env=env)
        try:
            wait_ready(url, server)
            print(f"smoke: ready after {time.monotonic() - started:.1f} s")
            swap_example(url)
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    if code != 0:
        raise SystemExit(f"smoke: the server exited with {code} after SIGTERM, not 0")
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
