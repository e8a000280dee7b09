"""Fire a bounded burst at a segswap server and report throughput, latency percentiles and status counts.

    python -m bench.load_test --url http://127.0.0.1:8000 --requests 200 --concurrency 16 [--key K] [--size 512]
    python -m bench.load_test --local --devices cpu,cpu ...   # start a composite-engine server in-process

Each request is the same JSON body (base64 images) with its own seed. Prints JSON:
requests/s, p50/p95/p99 latency of the 200s, and the count of each status code.
With --local it also measures the engine alone (seconds per image) and reports the
ratio of the measured throughput to workers / engine time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import time
from collections import Counter

import httpx

from bench.request_latency import sample_files


async def fire(
    url: str, body: dict, total: int, concurrency: int, key: str | None
) -> tuple[list[tuple[int, float]], float]:
    headers = {"x-api-key": key} if key else {}
    slots = asyncio.Semaphore(concurrency)
    results: list[tuple[int, float]] = []

    async def one(client: httpx.AsyncClient, seed: int) -> None:
        async with slots:
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/seg-swap", json={**body, "seed": seed})
                status = response.status_code
            except httpx.HTTPError:
                status = 0  # transport failure: counted, never hidden
            results.append((status, time.perf_counter() - start))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, headers=headers, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client, seed) for seed in range(1, total + 1)))
        return results, time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else float("nan")


def summarise(results: list[tuple[int, float]], elapsed: float) -> dict:
    ok = [seconds for status, seconds in results if status == 200]
    return {
        "requests": len(results),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "latency_s": {
            "p50": round(percentile(ok, 0.5), 4),
            "p95": round(percentile(ok, 0.95), 4),
            "p99": round(percentile(ok, 0.99), 4),
        },
        "status_counts": dict(sorted(Counter(str(status) for status, _ in results).items())),
    }


def idle_between_jobs(metrics_text: str) -> dict:
    """Mean and count of the workers' idle gaps between back-to-back jobs, from /metrics."""
    values = {}
    for line in metrics_text.splitlines():
        for name in ("segswap_worker_idle_seconds_sum", "segswap_worker_idle_seconds_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    count = values.get("segswap_worker_idle_seconds_count", 0.0)
    mean = values.get("segswap_worker_idle_seconds_sum", 0.0) / count if count else None
    return {"gaps": int(count), "mean_s": None if mean is None else round(mean, 6)}


def sample_request(size: int) -> dict:
    """request_latency's sample scene, mask and object as a JSON body."""
    files = sample_files(size)
    return {**{name: base64.b64encode(data).decode() for name, data in files.items()}, "seed": 1}


def engine_seconds(body: dict, repeats: int = 5) -> float:
    """Median seconds of the composite engine alone on the body's job: what one worker can do at best."""
    import statistics

    from PIL import Image

    from pipelines import SwapJob
    from pipelines.engines.composite import CompositeEngine

    images = {
        name: Image.open(io.BytesIO(base64.b64decode(body[name])))
        for name in ("main_image", "mask_image", "object_image")
    }
    job = SwapJob(images["main_image"].convert("RGB"), images["mask_image"], images["object_image"], seed=body["seed"])
    engine = CompositeEngine()
    engine.swap(job)  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.swap(job)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="side of the square sample images")
    parser.add_argument("--local", action="store_true", help="start a composite-engine server in this process")
    parser.add_argument("--devices", default="cpu", help="with --local: worker devices, e.g. cpu,cpu")
    parser.add_argument("--max-queue", type=int, default=64, help="with --local: SEGSWAP_MAX_QUEUE")
    args = parser.parse_args(argv)

    body = sample_request(args.size)
    if not args.local:
        report = summarise(*asyncio.run(fire(args.url, body, args.requests, args.concurrency, args.key)))
        print(json.dumps(report, indent=2))
        return report

    from server.api.app import create_app
    from server.api.live_server import live_server
    from server.settings import Settings

    devices = args.devices.split(",")
    settings = Settings(engine="composite", devices=devices, max_queue=args.max_queue, api_keys=["bench"])
    with live_server(create_app(settings)) as url:
        report = summarise(*asyncio.run(fire(url, body, args.requests, args.concurrency, "bench")))
        report["worker_idle_between_jobs_s"] = idle_between_jobs(httpx.get(f"{url}/metrics").text)
    per_image = engine_seconds(body)
    ceiling = len(devices) / per_image
    report.update(
        workers=len(devices),
        size=f"{args.size}x{args.size}",
        engine_s_per_image=round(per_image, 4),
        engine_bound_requests_per_s=round(ceiling, 2),
        share_of_engine_bound=round(report["requests_per_s"] / ceiling, 3),
    )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
