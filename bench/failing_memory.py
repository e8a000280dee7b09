"""RSS of the serving process over a run of failing requests, and of succeeding ones, with large images.

    python -m bench.failing_memory [--requests 12] [--side 4000]

Starts the app on the composite engine in a subprocess twice: once with an engine that fails every job after
decoding (as bad input found deep in a model would), once with the composite engine. Sends the same large
request N times, one at a time, and prints the server's RSS after each. The garbage collector runs as usual:
the point is that failing requests must not hold their images until a full collection.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image, ImageDraw

from server.api.live_server import free_port

SERVER = """
import sys, uvicorn
from pipelines import CompositeEngine, InvalidInput
from server.api.app import create_app
from server.settings import Settings

class Failing:
    name = "failing"
    def swap(self, job, progress=None):
        if job.steps == 2:
            return job.main_image
        raise InvalidInput("the engine could not use this object", "object_image")

engine = Failing() if sys.argv[2] == "failing" else CompositeEngine()
settings = Settings(api_keys=["k"], max_body_bytes=400_000_000, max_image_pixels=100_000_000)
uvicorn.run(create_app(settings, engine), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def body(side: int) -> bytes:
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle((side // 4, side // 4, side // 2, side // 2), fill=255)

    def b64(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
        return base64.b64encode(buffer.getvalue()).decode()

    values = {
        "main_image": b64(scene),
        "mask_image": b64(mask),
        "object_image": b64(Image.new("RGB", (64, 64))),
        "horizontal_repeat": 2,
    }
    return json.dumps(values).encode()


def run(kind: str, data: bytes, requests: int) -> list[float]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), kind])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        samples = [rss_mb(process.pid)]
        headers = {"x-api-key": "k", "content-type": "application/json"}
        for _ in range(requests):
            httpx.post(f"{url}/v1/seg-swap", content=data, headers=headers, timeout=300)
            samples.append(rss_mb(process.pid))
        return samples
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--side", type=int, default=4000)
    args = parser.parse_args()
    data = body(args.side)
    report = {kind: [round(mb) for mb in run(kind, data, args.requests)] for kind in ("failing", "succeeding")}
    print(json.dumps({"side": args.side, "requests": args.requests, "rss_mb_after_each": report}, indent=2))


if __name__ == "__main__":
    main()
