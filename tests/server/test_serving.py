"""Serving under load: backpressure, deadlines, disconnects, readiness, metrics, a free event loop."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from server.api.app import create_app
from server.api.live_server import live_server
from server.settings import Settings
from tests.server.engines import GatedEngine

KEY = {"x-api-key": "k"}


def settings(**overrides) -> Settings:
    return Settings(api_keys=["k"], **overrides)


def request_body(body: dict, seed: int) -> dict:
    return {**body, "seed": seed}


async def burst(url: str, body: dict, seeds: range, timeout: float = 30) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=timeout, headers=KEY) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/seg-swap", json=request_body(body, s)) for s in seeds))


def wait_for_metric(url: str, name: str, value: float, timeout_s: float = 10.0) -> str:
    """Poll /metrics until `name` reads `value`; the metrics text then."""
    end = time.monotonic() + timeout_s
    while metric(text := httpx.get(f"{url}/metrics").text, name) != value:
        assert time.monotonic() < end, f"{name} never reached {value}"
        time.sleep(0.02)
    return text


async def running(engine) -> None:
    """Until the engine has started the job just sent (the worker is then held at the gate)."""
    assert await asyncio.to_thread(engine.started.wait, 10)


def metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_burst_larger_than_the_queue_gets_only_200s_and_429s(body):
    engine = GatedEngine(delay=0.15)
    app = create_app(settings(max_queue=3), engine)
    with live_server(app) as url:
        responses = asyncio.run(burst(url, body, range(1, 13)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 4
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1 and "queue full" in response.json()["error"]
            assert "x-rate-limit-reset-at-utc" in response.headers
    accepted = sorted(int(r.headers["x-seed-value"]) for r in responses if r.status_code == 200)
    assert sorted(s for s in engine.ran if s != 0) == accepted  # every accepted job ran exactly once


def test_deadline_in_the_queue_is_504_and_the_job_never_runs(body):
    engine = GatedEngine()
    app = create_app(settings(request_timeout_s=0.6), engine)
    with live_server(app) as url:
        engine.gate.clear()
        engine.started.clear()  # set by the warm-up swap

        async def scenario():
            async with httpx.AsyncClient(timeout=10, headers=KEY) as client:
                first = asyncio.create_task(client.post(f"{url}/v1/seg-swap", json=request_body(body, 1)))
                await running(engine)  # the worker is now stuck on job 1
                second = await client.post(f"{url}/v1/seg-swap", json=request_body(body, 2))
                engine.gate.set()
                return await first, second

        first, second = asyncio.run(scenario())
        text = wait_for_metric(url, "segswap_dropped_jobs_total", 1)
    assert second.status_code == 504 and "did not finish within 0.6 s" in second.json()["error"]
    assert first.status_code == 504  # it ran, but past its own deadline
    assert 1 in engine.ran and 2 not in engine.ran
    assert metric(text, "segswap_dropped_jobs_total") == 1


def test_client_that_disconnects_while_queued_has_its_job_dropped(body):
    engine = GatedEngine()
    app = create_app(settings(), engine)
    with live_server(app) as url:
        engine.gate.clear()
        engine.started.clear()  # set by the warm-up swap

        async def scenario():
            async with httpx.AsyncClient(timeout=10, headers=KEY) as client:
                first = asyncio.create_task(client.post(f"{url}/v1/seg-swap", json=request_body(body, 1)))
                await running(engine)
                with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
                    await client.post(f"{url}/v1/seg-swap", json=request_body(body, 2), timeout=0.4)
                await asyncio.to_thread(wait_for_metric, url, "segswap_dropped_jobs_total", 1)  # the server noticed
                engine.gate.set()
                return await first

        first = asyncio.run(scenario())
        text = httpx.get(f"{url}/metrics").text
    assert first.status_code == 200
    assert 2 not in engine.ran
    assert metric(text, "segswap_dropped_jobs_total") == 1
    assert metric(text, "segswap_responses_total", route="/v1/seg-swap", status="499") == 1  # not a 504 of ours
    assert metric(text, "segswap_responses_total", route="/v1/seg-swap", status="504") == 0


def test_readiness_flips_after_warm_up(body):
    engine = GatedEngine()
    engine.gate.clear()  # warm-up blocks here
    app = create_app(settings(), engine)
    with live_server(app, wait_ready=False) as url:
        assert engine.started.wait(5)
        assert httpx.get(f"{url}/health/live").status_code == 200
        not_ready = httpx.get(f"{url}/health/ready")
        assert not_ready.status_code == 503 and "warming up" in not_ready.json()["error"]
        refused = httpx.post(f"{url}/v1/seg-swap", json=body, headers=KEY)
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        engine.gate.set()
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ready = httpx.get(f"{url}/health/ready").json()
        assert ready["engine"] == "gated" and ready["workers"] == 1


def test_one_worker_per_device_from_the_same_queue(body):
    engine = GatedEngine(delay=0.3)
    app = create_app(settings(devices=["cpu", "cpu"]), engine_factory=lambda device: engine)
    with live_server(app) as url:
        assert httpx.get(f"{url}/health/ready").json()["workers"] == 2
        engine.most_at_once = 0  # the two warm-up swaps may have overlapped
        responses = asyncio.run(burst(url, body, range(1, 5)))
    assert [r.status_code for r in responses] == [200] * 4
    assert engine.most_at_once == 2  # the two workers ran jobs side by side (not one after the other)


def test_metrics_move_as_requests_flow(client, body):
    before = client.get("/metrics").text
    assert client.post("/v1/seg-swap", json=body).status_code == 200
    assert client.post("/v1/seg-swap", json={**body, "steps": 5}).status_code == 400
    after = client.get("/metrics").text
    for name, labels in [
        ("segswap_responses_total", {"route": "/v1/seg-swap", "status": "200"}),
        ("segswap_responses_total", {"route": "/v1/seg-swap", "status": "400"}),
        ("segswap_images_total", {"engine": "composite"}),
        ("segswap_stage_seconds_count", {"stage": "engine"}),
        ("segswap_queue_wait_seconds_count", {}),
        ("segswap_request_seconds_count", {"route": "/v1/seg-swap"}),
    ]:
        assert metric(after, name, **labels) == metric(before, name, **labels) + (
            2 if "request_seconds" in name else 1
        ), name
    assert "segswap_queue_depth 0.0" in after and "segswap_in_flight 0.0" in after


def test_event_loop_answers_live_within_100ms_while_the_engine_is_busy(body):
    engine = GatedEngine(delay=1.5, busy=True)
    app = create_app(settings(), engine)
    with live_server(app) as url:

        async def scenario():
            async with httpx.AsyncClient(timeout=10, headers=KEY) as client:
                running = asyncio.create_task(client.post(f"{url}/v1/seg-swap", json=request_body(body, 1)))
                await asyncio.sleep(0.3)
                latencies = []
                for _ in range(8):
                    start = time.perf_counter()
                    assert (await client.get(f"{url}/health/live")).status_code == 200
                    latencies.append(time.perf_counter() - start)
                    await asyncio.sleep(0.05)
                assert (await running).status_code == 200
                return latencies

        latencies = asyncio.run(scenario())
    # One probe may lose the CPU to another process on a small shared machine; the rest must be quick.
    assert sorted(latencies)[-2] < 0.1, latencies
    assert engine.ran == [0, 0, 1]  # the warm-up's swap and erase, then job 1, busy while the probes ran


def test_access_log_is_one_json_line_with_request_id_and_key_id(client, body, caplog):
    import json
    import logging

    with caplog.at_level(logging.INFO, logger="segswap.access"):
        client.post("/v1/seg-swap", json=body, headers={"x-request-id": "trace-42"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "segswap.access"]
    line = next(entry for entry in lines if entry["request_id"] == "trace-42")
    assert line["status"] == 200 and line["engine"] == "composite" and line["key_id"].startswith("env-")
    assert "test-key" not in json.dumps(line) and {"inputs_s", "queue_s", "engine_s", "encode_s"} <= set(line)


def test_worker_idle_gap_between_back_to_back_jobs_is_measured(body):
    engine = GatedEngine(delay=0.05)
    app = create_app(settings(), engine)
    with live_server(app) as url:
        responses = asyncio.run(burst(url, body, range(1, 6)))
        text = httpx.get(f"{url}/metrics").text
    assert [r.status_code for r in responses] == [200] * 5
    gaps = metric(text, "segswap_worker_idle_seconds_count")
    assert gaps >= 3  # jobs 2..5 were waiting when the one before finished
    assert metric(text, "segswap_worker_idle_seconds_sum") / gaps < 0.05  # the worker picks the next job at once


def test_json_formatter_merges_access_fields_into_one_object():
    import json
    import logging

    from server.serving.logs import JsonFormatter

    line = {"request_id": "r1", "status": 200, "engine_s": 0.5}
    record = logging.LogRecord("segswap.access", logging.INFO, __file__, 1, json.dumps(line), None, None)
    record.access = line
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "r1" and entry["status"] == 200 and "message" not in entry
    plain = logging.LogRecord("segswap", logging.INFO, __file__, 1, "ready: %d worker(s)", (2,), None)
    assert json.loads(JsonFormatter().format(plain))["message"] == "ready: 2 worker(s)"


def test_a_stopped_queue_refuses_work_instead_of_holding_it():
    """After the lifespan stops the workers nothing would run a job: a request is refused with a 503, not left
    waiting for its deadline (the schema fuzzer, which ends the app's lifespan, ran into that)."""
    import asyncio

    from server.errors import Unavailable
    from server.serving.work_queue import WorkQueue

    work = WorkQueue(4)
    work.stop()

    async def submit() -> None:
        work.submit(object(), 0.0)

    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(submit())
    with pytest.raises(Unavailable):
        work.check_capacity()


def test_a_client_that_leaves_mid_upload_is_a_499_in_the_metrics_not_a_500(body):
    import socket
    from urllib.parse import urlsplit

    with live_server(create_app(settings(), GatedEngine())) as url:
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port)) as upload:
            head = f"POST /v1/seg-swap HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY['x-api-key']}\r\n"
            upload.sendall(f"{head}content-type: application/json\r\ncontent-length: 100000\r\n\r\n{{".encode())
            time.sleep(0.3)
        end, counted = time.monotonic() + 10, {}
        while sum(counted.values()) == 0 and time.monotonic() < end:  # the server's answer to nobody, counted
            text = httpx.get(f"{url}/metrics").text
            counted = {
                code: metric(text, "segswap_responses_total", route="/v1/seg-swap", status=code)
                for code in ("499", "500")
            }
            time.sleep(0.05)
        assert httpx.get(f"{url}/health/live").status_code == 200
    assert counted == {"499": 1, "500": 0}
