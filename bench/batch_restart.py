"""A v2 batch across a crash: N submits, SIGKILL of the server in the middle, restart, drain.

    python -m bench.batch_restart [--jobs 200] [--size 512]

Runs `segswap serve` (composite engine) in a subprocess on a fresh job store, submits the
batch, kills the server with SIGKILL once a third of the jobs are done, restarts it, and
waits until every job has finished. Prints JSON: time to drain, jobs lost (not COMPLETED),
jobs run more than once (from the store's attempt counts), and results that can be fetched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.request_latency import sample_request
from server.api.live_server import free_port

KEY = "bench-key"


def start(port: int, jobs_dir: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SEGSWAP_ENGINE": "composite",
        "SEGSWAP_JOBS_DIR": str(jobs_dir),
        "SEGSWAP_API_KEYS": KEY,
        "SEGSWAP_PORT": str(port),
        "SEGSWAP_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, stderr=subprocess.DEVNULL)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)


async def submit_all(url: str, body: dict, jobs: int, concurrency: int = 8) -> list[str]:
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers={"x-api-key": KEY}, timeout=120) as client:

        async def submit(seed: int) -> str:
            async with slots:
                answer = await client.post(f"{url}/v2/seg-swap", json={**body, "seed": seed})
                answer.raise_for_status()
                return answer.json()["request_id"]

        return await asyncio.gather(*(submit(seed) for seed in range(jobs)))


def counts(url: str, ids: list[str]) -> Counter:
    with httpx.Client(headers={"x-api-key": KEY}) as client:
        return Counter(client.get(f"{url}/v2/requests/{i}/status").json()["status"] for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()

    jobs_dir, port = Path(tempfile.mkdtemp(prefix="segswap-batch-")) / "jobs", free_port()
    url, body = f"http://127.0.0.1:{port}", sample_request(args.size)
    process = start(port, jobs_dir)
    start_time = time.perf_counter()
    ids = asyncio.run(submit_all(url, body, args.jobs))
    submit_s = time.perf_counter() - start_time
    while counts(url, ids)["COMPLETED"] < args.jobs // 3:
        time.sleep(0.05)
    at_kill = counts(url, ids)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process = start(port, jobs_dir)
    while sum(counts(url, ids)[s] for s in ("COMPLETED", "FAILED", "CANCELLED")) < args.jobs:
        time.sleep(0.1)
    drain_s = time.perf_counter() - start_time
    final = counts(url, ids)
    with httpx.Client(headers={"x-api-key": KEY}) as client:
        fetched = sum(client.get(f"{url}/v2/requests/{i}/output").status_code == 200 for i in ids)
    process.terminate()
    process.wait()
    rows = sqlite3.connect(jobs_dir / "jobs.sqlite3").execute("SELECT id, attempts FROM jobs").fetchall()
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "size": f"{args.size}x{args.size}",
                "submit_s": round(submit_s, 2),
                "status_at_kill": dict(at_kill),
                "time_to_drain_s": round(drain_s, 2),
                "final_status": dict(final),
                "distinct_ids": len(set(ids)),
                "job_rows": len(rows),
                "lost": args.jobs - final["COMPLETED"],
                "run_more_than_once": sum(attempts > 1 for _, attempts in rows),
                "results_fetched": fetched,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
