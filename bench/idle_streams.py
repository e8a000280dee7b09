"""What idle v2 event streams cost the server: CPU cores used while N streams wait on a queued job.

    python -m bench.idle_streams [--streams 1000] [--seconds 10]

Starts a server in a subprocess (its engine holds the first job forever, so the worker sleeps and a second job
stays QUEUED), opens N event streams on the queued job, and reads the server's CPU time from /proc over
`--seconds`, before and after the streams open. Prints JSON. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import httpx
from PIL import Image

KEY = "bench-key-0123456789"


class HeldEngine:
    """Answers the warm-up; every other job waits forever (the worker thread asleep, using no CPU)."""

    name = "held"

    def swap(self, job, progress=None):
        if job.steps != 2:  # the warm-up's swaps have 2 steps
            threading.Event().wait()
        return job.main_image.copy()


def serve(port: int, streams: int, jobs_dir: str) -> None:
    import uvicorn

    from server.api.app import create_app
    from server.settings import Settings

    settings = Settings(api_keys=[KEY], jobs_dir=jobs_dir, max_streams_per_key=streams + 1, log_level="warning")
    uvicorn.run(create_app(settings, HeldEngine()), host="127.0.0.1", port=port, log_level="warning")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cores_used(pid: int, seconds: float) -> float:
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return round((cpu_seconds(pid) - start) / seconds, 3)


async def open_streams(port: int, job: str, count: int) -> list:
    """`count` raw connections, each following the job's events until its first event has arrived."""

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v2/requests/{job}/events HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n\r\n".encode())
        await writer.drain()
        answer = b""
        while b"event: status" not in answer:
            answer += await reader.read(4096)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(answer.decode(errors="replace")[:200])
        return writer

    writers = []
    for start in range(0, count, 100):
        writers += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return writers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--jobs-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.streams + 1024)), hard))
    if args.serve:
        serve(args.serve, args.streams, args.jobs_dir)
        return
    from server.api.live_server import free_port

    port, folder = free_port(), tempfile.TemporaryDirectory(prefix="idle-streams-")
    command = [sys.executable, "-m", "bench.idle_streams", "--serve", str(port), "--jobs-dir", folder.name]
    server = subprocess.Popen([*command, "--streams", str(args.streams)])
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 60
        while not _ready(url):
            if time.monotonic() > end:
                raise SystemExit("the server did not become ready")
            time.sleep(0.2)
        body = {
            "main_image": _png(Image.effect_noise((64, 48), 40).convert("RGB")),
            "object_image": _png(Image.new("RGB", (16, 16))),
        }
        mask = Image.new("L", (64, 48))
        mask.paste(255, (16, 12, 48, 36))
        body["mask_image"] = _png(mask)
        jobs = [
            httpx.post(f"{url}/v2/seg-swap", json=body, headers={"x-api-key": KEY}).json()["request_id"]
            for _ in range(2)
        ]  # the first holds the worker, the second waits QUEUED
        before = cores_used(server.pid, args.seconds)
        loop = asyncio.new_event_loop()
        writers = loop.run_until_complete(open_streams(port, jobs[1], args.streams))
        time.sleep(1.0)  # the last streams settle
        after = cores_used(server.pid, args.seconds)
        print(json.dumps({"streams": len(writers), "cores_before": before, "cores_with_streams": after}))
        for writer in writers:
            writer.close()
        loop.close()
    finally:
        server.kill()  # its held job would keep a graceful shutdown waiting
        server.wait(30)
        folder.cleanup()


def _png(image: Image.Image) -> str:
    data = io.BytesIO()
    image.save(data, "PNG")
    return base64.b64encode(data.getvalue()).decode("ascii")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
