"""One /v1/seg-swap request at 1024x1024 on a real HTTP server: the time around the engine and the engine's, each
against Pillow's bare decode of the three inputs plus a lossless encode of the output.

    python -m bench.request_latency [--size 1024] [--repeats 10] [--engine composite] [--weights DIR]

Starts the app with uvicorn on a free loopback port and posts the same request `repeats` times as JSON (base64
images) and as multipart (raw files), alternating, PNG out. For each request: end to end (client side) and the
engine's seconds (`x-generation-time`); around the engine = end to end - engine. The yardstick, in the same
run: `Image.open(...).load()` of the three input PNGs plus `save(PNG)` of the output at the server's
compression level, with nothing else around them. Prints JSON with both ratios (targets: around <= 1.25x,
engine <= 1.0x for the composite engine).

Beside the swap, an erase (`mode=erase`, no object) of a disc covering 15 % of the same scene, as JSON: its
engine seconds (target on the composite engine: 1.0 s on two cores) and end to end.
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

from server.api.app import create_app
from server.api.live_server import live_server
from server.inputs.encode import PNG_COMPRESS_LEVEL
from server.settings import Settings

FIELDS = ("main_image", "mask_image", "object_image")
TARGETS = {"around_over_bare": 1.25, "engine_over_bare": 1.0, "erase_engine_s": 1.0}
ERASE_SHARE = 0.15  # of the scene's area


def sample_files(size: int) -> dict[str, bytes]:
    """A noisy scene (the hardest case for PNG), an ellipse mask half its side, an object half its side."""
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    obj = Image.new("RGBA", (size // 2, size // 2), (30, 160, 60, 255))
    return {field: _png(image) for field, image in zip(FIELDS, (scene, mask, obj), strict=True)}


def erase_files(files: dict[str, bytes], size: int) -> dict[str, bytes]:
    """The same scene, and a centred disc covering ERASE_SHARE of it."""
    radius = size * (ERASE_SHARE / np.pi) ** 0.5
    mask = Image.new("L", (size, size), 0)
    centre = size / 2
    ImageDraw.Draw(mask).ellipse((centre - radius, centre - radius, centre + radius, centre + radius), fill=255)
    return {"main_image": files["main_image"], "mask_image": _png(mask)}


def timed_erases(url: str, files: dict[str, bytes], repeats: int) -> dict[str, float]:
    body = json.dumps({**{k: base64.b64encode(v).decode() for k, v in files.items()}, "mode": "erase", "seed": 1})
    end_to_end, engine = [], []
    with httpx.Client(timeout=600) as client:
        for index in range(repeats + 1):  # the first warms up
            start = time.perf_counter()
            response = post(client, url, (body.encode(), "application/json"))
            seconds = time.perf_counter() - start
            response.raise_for_status()
            if index:
                end_to_end.append(seconds)
                engine.append(float(response.headers["x-generation-time"]))
    return {
        "mask_share": ERASE_SHARE,
        "end_to_end_s_median": round(statistics.median(end_to_end), 4),
        "engine_s_median": round(statistics.median(engine), 4),
    }


def _png(image: Image.Image, level: int = 6) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def bare_decode_encode(files: dict[str, bytes], output: bytes, repeats: int) -> dict[str, float]:
    """Median seconds of Pillow's decode of the inputs and lossless encode of the output, nothing around them."""
    result = Image.open(io.BytesIO(output))
    result.load()
    decode, encode = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in files.values():
            Image.open(io.BytesIO(data)).load()
        decode.append(time.perf_counter() - start)
        start = time.perf_counter()
        _png(result, PNG_COMPRESS_LEVEL)
        encode.append(time.perf_counter() - start)
    return {"decode_s": statistics.median(decode), "encode_s": statistics.median(encode)}


def request_bodies(files: dict[str, bytes], seed: int) -> dict[str, tuple[bytes, str]]:
    """Each transport's body and content type, built once: the client's own serialising is not the server's time."""
    payload = {field: base64.b64encode(data).decode() for field, data in files.items()}
    uploads = {field: (f"{field}.png", data, "image/png") for field, data in files.items()}
    form = httpx.Request("POST", "http://x", files=uploads, data={"seed": str(seed)})
    return {
        "json": (json.dumps({**payload, "seed": seed}).encode(), "application/json"),
        "multipart": (form.read(), form.headers["content-type"]),
    }


def post(client: httpx.Client, url: str, body: tuple[bytes, str]) -> httpx.Response:
    return client.post(f"{url}/v1/seg-swap", content=body[0], headers={"content-type": body[1]})


def timed_requests(url: str, files: dict[str, bytes], repeats: int) -> tuple[dict[str, dict], bytes]:
    samples: dict[str, dict[str, list[float]]] = {t: {"end_to_end": [], "engine": []} for t in ("json", "multipart")}
    output = b""
    bodies = request_bodies(files, seed=1)
    with httpx.Client(timeout=600) as client:
        for transport in samples:  # warm-up
            post(client, url, bodies[transport]).raise_for_status()
        for index in range(repeats):
            order = ("json", "multipart") if index % 2 == 0 else ("multipart", "json")
            for transport in order:
                start = time.perf_counter()
                response = post(client, url, bodies[transport])
                seconds = time.perf_counter() - start
                response.raise_for_status()
                samples[transport]["end_to_end"].append(seconds)
                samples[transport]["engine"].append(float(response.headers["x-generation-time"]))
                output = response.content
    return samples, output


def report(samples: dict[str, dict], bare: dict[str, float], args, request_bytes: int) -> dict:
    bare_s = bare["decode_s"] + bare["encode_s"]
    rows = {}
    for transport, times in samples.items():
        around = [e2e - engine for e2e, engine in zip(times["end_to_end"], times["engine"], strict=True)]
        engine = statistics.median(times["engine"])
        rows[transport] = {
            "end_to_end_s_median": round(statistics.median(times["end_to_end"]), 4),
            "engine_s_median": round(engine, 4),
            "around_engine_s_median": round(statistics.median(around), 4),
            "around_over_bare": round(statistics.median(around) / bare_s, 3),
            "engine_over_bare": round(engine / bare_s, 3),
        }
    return {
        "size": f"{args.size}x{args.size}",
        "engine": args.engine,
        "repeats": args.repeats,
        "json_request_bytes": request_bytes,
        "bare_decode_s": round(bare["decode_s"], 4),
        "bare_encode_s": round(bare["encode_s"], 4),
        "bare_decode_encode_s": round(bare_s, 4),
        "targets": TARGETS,
        **rows,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--engine", default="composite")
    parser.add_argument("--weights", help="weights folder for the diffusion engine (`segswap weights make-tiny`)")
    args = parser.parse_args(argv)

    files = sample_files(args.size)
    settings = Settings(engine=args.engine, **({"weights_dir": args.weights} if args.weights else {}))
    with live_server(create_app(settings)) as url:
        samples, output = timed_requests(url, files, args.repeats)
        erase = timed_erases(url, erase_files(files, args.size), args.repeats)
    bare = bare_decode_encode(files, output, args.repeats)
    result = {**report(samples, bare, args, len(request_bodies(files, seed=1)["json"][0])), "erase": erase}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
