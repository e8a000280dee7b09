"""Priority through the HTTP app: v1 and v2 `priority: interactive` jobs go before the v2 batch backlog (in the
work queue and in the job store), on a gated engine that holds the first job while the others queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient

from pipelines import CompositeEngine
from server.api.app import create_app
from server.api.live_server import live_server
from server.serving.priority import BATCH, INTERACTIVE
from server.settings import Settings
from tests.conftest import wait_ready
from tests.server.engines import GatedEngine

KEY = {"x-api-key": "key-one"}
BACKLOG = (1, 2, 3)  # seeds of the batch jobs: the first held at the gate, the second in the work queue, the third
# in the store (one, so that no two batch jobs load side by side for an idle worker: either may then start first)
URGENT = 10


def settings(tmp_path) -> Settings:
    return Settings(api_keys=[KEY["x-api-key"]], jobs_dir=tmp_path / "jobs")


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def submit(client: httpx.Client, body: dict, seed: int, **extra) -> str:
    answer = client.post("/v2/seg-swap", json={**body, "seed": seed, **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def status(client: httpx.Client, request_id: str) -> str:
    return client.get(f"/v2/requests/{request_id}/status").json()["status"]


def queue_the_backlog(app, client: httpx.Client, engine: GatedEngine, body: dict) -> list[str]:
    """The batch jobs submitted with the gate closed: the first running, the next in the work queue, the rest
    in the store."""
    engine.gate.clear()
    ids = [submit(client, body, seed) for seed in BACKLOG]
    wait_until(lambda: status(client, ids[0]) == "PROCESSING")
    wait_until(lambda: app.state.sets.depth_of(BATCH) == 1)
    return ids


def test_a_v1_request_runs_before_the_batch_jobs_queued_before_it(tmp_path, body):
    engine = GatedEngine()
    app = create_app(settings(tmp_path), engine)
    with live_server(app) as url, httpx.Client(base_url=url, headers=KEY, timeout=30) as client:
        ids = queue_the_backlog(app, client, engine, body)
        with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, headers=KEY, timeout=30) as other:
            v1 = pool.submit(other.post, "/v1/seg-swap", json={**body, "seed": URGENT})
            wait_until(lambda: app.state.sets.depth_of(INTERACTIVE) == 1)
            metrics = client.get("/metrics").text
            engine.gate.set()
            assert v1.result().status_code == 200
        wait_until(lambda: all(status(client, request_id) == "COMPLETED" for request_id in ids))
    assert [seed for seed in engine.ran if seed] == [BACKLOG[0], URGENT, *BACKLOG[1:]]
    for priority in (BATCH, INTERACTIVE):
        assert f'segswap_queue_depth_by_priority{{priority="{priority}"}} 1.0' in metrics


def test_an_interactive_v2_job_runs_before_the_batch_backlog(tmp_path, body):
    engine = GatedEngine()
    app = create_app(settings(tmp_path), engine)
    with live_server(app) as url, httpx.Client(base_url=url, headers=KEY, timeout=30) as client:
        ids = queue_the_backlog(app, client, engine, body)
        urgent = submit(client, body, URGENT, priority=INTERACTIVE)
        wait_until(lambda: app.state.sets.depth_of(INTERACTIVE) == 1)  # dispatched at once, not after the backlog
        engine.gate.set()
        wait_until(lambda: all(status(client, request_id) == "COMPLETED" for request_id in [*ids, urgent]))
    assert [seed for seed in engine.ran if seed] == [BACKLOG[0], URGENT, *BACKLOG[1:]]


def test_an_unknown_priority_is_a_400_naming_the_field_and_its_values(tmp_path, body):
    with TestClient(create_app(settings(tmp_path), CompositeEngine()), headers=KEY) as client:
        wait_ready(client)
        refused = client.post("/v2/seg-swap", json={**body, "priority": "urgent"})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert "priority" in error and "interactive" in error and "batch" in error, error
        # v1 is always interactive: the field is v2's only
        assert client.post("/v1/seg-swap", json={**body, "priority": INTERACTIVE}).status_code == 400
