"""End-to-end latency of one /v1/seg-swap request on a real HTTP server, and where the time goes.

    python -m bench.request_latency [--size 1024] [--repeats 10] [--engine composite]

Starts the app with uvicorn on a free loopback port, posts the same JSON request
(base64 images, PNG out) `repeats` times, and times the server's own stages
(base64 + image decoding, the engine, output encoding) by calling the same
functions on the same inputs. Prints JSON.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time

import httpx
import numpy as np
from PIL import Image, ImageDraw

from pipelines import SwapJob
from server.api.app import create_app
from server.api.live_server import live_server
from server.inputs.decode import decode_base64_field, decode_image
from server.inputs.encode import encode_image
from server.serving.workers import load_configured_engine
from server.settings import Settings


def sample_request(size: int) -> dict:
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").resize((size, size))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    obj = Image.new("RGBA", (size // 2, size // 2), (30, 160, 60, 255))

    def encoded(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    return {"main_image": encoded(scene), "mask_image": encoded(mask), "object_image": encoded(obj), "seed": 1}


def stage_times(body: dict, settings: Settings, repeats: int) -> dict[str, float]:
    engine = load_configured_engine(settings)
    decode, swap, encode = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        images = [
            decode_image(decode_base64_field(body[f], f), f, 40_000_000)
            for f in ("main_image", "mask_image", "object_image")
        ]
        decode.append(time.perf_counter() - start)
        job = SwapJob(
            main_image=images[0].convert("RGB"),
            mask_image=images[1],
            object_image=images[2],
            seed=1,
            steps=body.get("steps", 30),
        )
        start = time.perf_counter()
        image = engine.swap(job)
        swap.append(time.perf_counter() - start)
        start = time.perf_counter()
        encode_image(image, "png", 95)
        encode.append(time.perf_counter() - start)
    return {
        "decode_s": statistics.median(decode),
        "engine_s": statistics.median(swap),
        "encode_s": statistics.median(encode),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--engine", default="composite")
    parser.add_argument(
        "--weights", help="weights folder for the diffusion engine (e.g. from `segswap weights make-tiny`)"
    )
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    body = {**sample_request(args.size), "steps": args.steps}
    settings = Settings(engine=args.engine, **({"weights_dir": args.weights} if args.weights else {}))
    totals = []
    with live_server(create_app(settings)) as url, httpx.Client(timeout=600) as client:
        client.post(f"{url}/v1/seg-swap", json=body).raise_for_status()  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            client.post(f"{url}/v1/seg-swap", json=body).raise_for_status()
            totals.append(time.perf_counter() - start)

    stages = stage_times(body, settings, args.repeats)
    total = statistics.median(totals)
    report = {
        "size": f"{args.size}x{args.size}",
        "engine": args.engine,
        "steps": args.steps,
        "request_body_bytes": len(json.dumps(body)),
        "end_to_end_s_median": round(total, 4),
        "end_to_end_s_p90": round(sorted(totals)[int(0.9 * (len(totals) - 1))], 4),
        **{key: round(value, 4) for key, value in stages.items()},
        "decode_encode_share": round((stages["decode_s"] + stages["encode_s"]) / total, 3),
        "engine_share": round(stages["engine_s"] / total, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
