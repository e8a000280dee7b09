"""A server killed with SIGKILL while v2 jobs are queued and running completes every job exactly once after restart."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from server.api.live_server import free_port

REPO = Path(__file__).resolve().parents[2]
HEADERS = {"x-api-key": "k"}


def start(port: int, jobs_dir: Path, run_log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.server.serve_slow", str(port), "0.15", str(jobs_dir), str(run_log)], cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
        time.sleep(0.05)


def seeds_processing(jobs_dir: Path) -> set[int]:
    with sqlite3.connect(jobs_dir / "jobs.sqlite3") as db:
        rows = db.execute("SELECT params FROM jobs WHERE status = 'PROCESSING'").fetchall()
    return {json.loads(params)["seed"] for (params,) in rows}


def statuses(url: str, ids: list[str]) -> Counter:
    return Counter(httpx.get(f"{url}/v2/requests/{i}/status", headers=HEADERS).json()["status"] for i in ids)


def test_sigkill_with_jobs_queued_and_running_then_restart_completes_each_once(tmp_path, body):
    port, jobs_dir, run_log = free_port(), tmp_path / "jobs", tmp_path / "runs.log"
    url = f"http://127.0.0.1:{port}"
    process = start(port, jobs_dir, run_log)
    try:
        ids = [
            httpx.post(f"{url}/v2/seg-swap", json={**body, "seed": seed}, headers=HEADERS).json()["request_id"]
            for seed in range(1, 13)
        ]
        while statuses(url, ids)["COMPLETED"] < 3:  # some done, one running, the rest queued
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        caught_running = seeds_processing(jobs_dir)  # what the crash interrupted, as the store recorded it
        process = start(port, jobs_dir, run_log)
        deadline = time.monotonic() + 60
        while statuses(url, ids)["COMPLETED"] < len(ids):
            assert time.monotonic() < deadline, statuses(url, ids)
            time.sleep(0.1)
        for request_id in ids:
            assert httpx.get(f"{url}/v2/requests/{request_id}/output", headers=HEADERS).status_code == 200
    finally:
        process.kill()
    runs = Counter(int(line) for line in run_log.read_text().split() if line != "0")  # 0: warm-up
    assert set(runs) == set(range(1, 13))
    assert len(caught_running) <= 1  # one worker
    assert all(count == 1 for seed, count in runs.items() if seed not in caught_running), runs
    assert all(runs[seed] in (1, 2) for seed in caught_running), runs  # it may have finished before the kill
