"""SIGTERM drains: readiness and new requests get 503 at once, queued and running jobs finish, exit 0."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server.api.live_server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_drains_queued_and_running_work_then_exits_zero(body):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "tests.server.serve_slow", str(port), "0.4"], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
            time.sleep(0.1)

        async def scenario():
            async with httpx.AsyncClient(timeout=30, headers={"x-api-key": "k"}) as client:
                inflight = [
                    asyncio.create_task(client.post(f"{url}/v1/seg-swap", json={**body, "seed": s})) for s in (1, 2, 3)
                ]
                while "segswap_queue_depth 2.0" not in (await client.get(f"{url}/metrics")).text:
                    await asyncio.sleep(0.01)  # until one runs and two wait
                os.kill(process.pid, signal.SIGTERM)
                while (ready := await client.get(f"{url}/health/ready")).status_code == 200:
                    await asyncio.sleep(0.01)  # until the signal is handled
                refused = await client.post(f"{url}/v1/seg-swap", json=body)
                return ready, refused, await asyncio.gather(*inflight)

        ready, refused, finished = asyncio.run(scenario())
        assert ready.status_code == 503 and "shutting down" in ready.json()["error"]
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]
        assert [r.status_code for r in finished] == [200, 200, 200]
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
