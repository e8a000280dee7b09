"""The C heap is trimmed once the server is idle after a burst, never while a request or job is in flight."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx

from server.api.app import create_app
from server.api.live_server import live_server
from server.serving import heap
from server.settings import Settings
from tests.server.engines import GatedEngine

KEY = "k"


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.05)
    return condition()


def test_the_heap_is_trimmed_once_after_the_last_request_or_job_and_not_before(tmp_path, body, monkeypatch):
    trims: list[float] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: lambda pad: trims.append(time.monotonic()) or 1)
    monkeypatch.setattr(heap, "TRIM_CHECK_S", 0.1)
    engine = GatedEngine()
    app = create_app(Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs"), engine)
    headers = {"x-api-key": KEY}
    with live_server(app) as url:
        for probe in ("/health/ready", "/health/live", "/metrics"):
            assert httpx.get(f"{url}{probe}").status_code == 200
        time.sleep(0.5)
        assert trims == []  # probes (the readiness polls too) and scrapes hold no images: no trim after them
        with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port)) as upload:
            payload = json.dumps(body).encode()
            head = f"POST /v1/seg-swap HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n"
            upload.sendall(f"{head}content-length: {len(payload)}\r\n\r\n".encode() + payload[:100])
            time.sleep(0.3)
            assert httpx.get(f"{url}/openapi.json").status_code == 200  # a request ended meanwhile
            time.sleep(0.5)
            assert trims == []  # the upload is still in flight
            upload.sendall(payload[100:])
            assert upload.recv(12).startswith(b"HTTP/1.1 200")
        assert wait_until(lambda: len(trims) == 1)
        time.sleep(0.5)
        assert len(trims) == 1  # once per burst, not every tick

        engine.gate.clear()
        engine.started.clear()
        job = httpx.post(f"{url}/v2/seg-swap", json=body, headers=headers, timeout=30)
        assert job.status_code == 200, job.text
        assert engine.started.wait(10)
        before = len(trims)  # the submit's end may be trimmed before its job is queued: that is no burst in flight
        time.sleep(0.5)
        assert len(trims) == before  # none while its job runs
        engine.gate.set()
        assert wait_until(lambda: len(trims) == before + 1)  # the job's end is trimmed
