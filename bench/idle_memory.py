"""The serving process's resident memory before, during and after bursts of large requests, with the idle heap
trim (server/serving/heap.py) on and off.

    python -m bench.idle_memory [--side 2500] [--requests 16] [--rounds 2]

Each run starts the app in a subprocess on an engine that hands the scene back (the memory measured is the
server's: bodies, decodes, encodes), sends `--requests` multipart requests of a `--side` square noise PNG at
once, `--rounds` times, and reads VmRSS at start, at the burst's peak and 3 s after it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
from PIL import Image

from bench.failing_memory import rss_mb
from server.api.live_server import free_port

SERVER = """
import sys, uvicorn
from server.api.app import create_app
from server.serving import heap
from server.settings import Settings

class Echo:
    name = "echo"
    def swap(self, job, progress=None):
        return job.main_image

if sys.argv[2] == "off":
    heap._malloc_trim = lambda: None
settings = Settings(api_keys=["k"], max_body_bytes=400_000_000, max_image_pixels=100_000_000, max_queue=256)
uvicorn.run(create_app(settings, Echo()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def files(side: int) -> dict[str, bytes]:
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[10:50, 10:50] = 255
    return {
        "main_image": png(Image.fromarray(noise)),
        "mask_image": png(Image.fromarray(mask)),
        "object_image": png(Image.new("RGB", (64, 64), (200, 0, 0))),
    }


def run(trim: str, side: int, requests: int, rounds: int) -> dict:
    port, body = free_port(), files(side)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), trim])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)

        def one() -> None:
            answer = httpx.post(f"{url}/v1/seg-swap", headers={"x-api-key": "k"}, files=body, timeout=600)
            assert answer.status_code == 200, answer.text

        one()
        time.sleep(3)
        start, figures = rss_mb(server.pid), []
        for _ in range(rounds):
            threads = [threading.Thread(target=one) for _ in range(requests)]
            peak = start
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                peak = max(peak, rss_mb(server.pid))
                time.sleep(0.05)
            time.sleep(3)
            figures.append({"peak_mb": round(peak), "idle_mb": round(rss_mb(server.pid))})
        return {"start_mb": round(start), "rounds": figures}
    finally:
        server.terminate()
        server.wait()


def _wait_ready(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not get ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2500)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    report = {trim: run(trim, args.side, args.requests, args.rounds) for trim in ("on", "off")}
    print(json.dumps({"side": args.side, "requests": args.requests, "trim": report}, indent=2))


if __name__ == "__main__":
    main()
