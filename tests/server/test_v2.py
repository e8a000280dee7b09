"""The asynchronous path: submit, poll, fetch, cancel, idempotency, expiry, webhooks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipelines import CompositeEngine, InvalidInput
from server.api.app import create_app
from server.api.live_server import live_server
from server.settings import Settings
from tests.conftest import b64, wait_ready
from tests.server.engines import GatedEngine

KEY, OTHER = "key-one", "key-two"


def make_client(tmp_path, engine=None, **overrides) -> TestClient:
    settings = Settings(api_keys=[KEY, OTHER], jobs_dir=tmp_path / "jobs", fetch_allow=["127.0.0.1"], **overrides)
    return TestClient(create_app(settings, engine or CompositeEngine()), headers={"x-api-key": KEY})


def wait_for(client, request_id: str, statuses=("COMPLETED", "FAILED", "CANCELLED"), timeout_s: float = 30) -> dict:
    end = time.monotonic() + timeout_s
    while True:
        answer = client.get(f"/v2/requests/{request_id}/status").json()
        if answer["status"] in statuses:
            return answer
        assert time.monotonic() < end, answer
        time.sleep(0.02)


def test_submit_poll_fetch(tmp_path, body, scene, database_url):
    with make_client(tmp_path, database_url=database_url) as client:
        wait_ready(client)
        submitted = client.post("/v2/seg-swap", json={**body, "image_format": "webp"})
        assert submitted.status_code == 200
        answer = submitted.json()
        assert answer["status"] == "QUEUED" and answer["status_url"].startswith("http://testserver/v2/requests/")
        assert answer["response_url"] == f"http://testserver/v2/requests/{answer['request_id']}"
        status = wait_for(client, answer["request_id"])
        assert status["status"] == "COMPLETED" and set(status["metrics"]) == {
            "queue_time",
            "inference_time",
            "total_time",
        }
        result = client.get(f"/v2/requests/{answer['request_id']}").json()
        assert result["seed"] == 7 and "image" not in result
        image = client.get(result["output"])
        assert image.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(image.content)).size == scene.size
        v1 = client.post("/v1/seg-swap", json={**body, "image_format": "png"}).content
        inline = client.post("/v2/seg-swap", json={**body, "base64": True}).json()
        wait_for(client, inline["request_id"])
        import base64

        assert base64.b64decode(client.get(inline["response_url"]).json()["image"]) == v1  # same engine, same bytes


def test_bad_body_is_refused_at_submit(tmp_path, body):
    with make_client(tmp_path) as client:
        wait_ready(client)
        assert client.post("/v2/seg-swap", json={**body, "steps": 5}).status_code == 400
        assert client.post("/v2/seg-swap", json={**body, "main_image": "nope"}).status_code == 400


def test_a_bad_query_parameter_or_header_is_a_400_naming_it(tmp_path, body):
    with make_client(tmp_path) as client:
        wait_ready(client)
        request_id = client.post("/v2/seg-swap", json=body).json()["request_id"]
        previews = client.get(f"/v2/requests/{request_id}/events?previews=banana")
        assert previews.status_code == 400
        assert previews.json()["error"].startswith("query parameter 'previews': input should be a valid boolean")
        long_key = client.post("/v2/seg-swap", json=body, headers={"Idempotency-Key": "k" * 5000})
        assert long_key.status_code == 400
        assert long_key.json()["error"] == "header 'Idempotency-Key': string should have at most 255 characters"


class RefusingEngine:
    """Refuses jobs asking for "refuse" the way an engine refuses an input it cannot use (the warm-up passes)."""

    name = "refusing"

    def swap(self, job, progress=None):
        if job.prompt == "refuse":
            raise InvalidInput("the object image has nothing to place", "object_image")
        return job.main_image


def test_failing_job_answers_422_failed_with_its_error(tmp_path, body, database_url):
    with make_client(tmp_path, RefusingEngine(), database_url=database_url) as client:
        wait_ready(client)
        request_id = client.post("/v2/seg-swap", json={**body, "prompt": "refuse"}).json()["request_id"]
        wait_for(client, request_id)
        status = client.get(f"/v2/requests/{request_id}/status")
        assert status.status_code == 422 and status.json()["status"] == "FAILED"
        assert "nothing to place" in status.json()["error"]
        assert client.get(f"/v2/requests/{request_id}").status_code == 422


def test_an_empty_mask_is_refused_at_submit(tmp_path, body, scene):
    """It would fail on every engine: a 400 saying so, not a job that fails later."""
    with make_client(tmp_path) as client:
        wait_ready(client)
        empty_mask = b64(Image.new("L", scene.size, 0))
        response = client.post("/v2/seg-swap", json={**body, "mask_image": empty_mask})
        assert response.status_code == 400 and "the mask selects no pixel" in response.json()["error"]


def test_unknown_other_key_and_expired_ids_are_404(tmp_path, body, database_url):
    with make_client(tmp_path, job_retention_s=1.0, database_url=database_url) as client:
        wait_ready(client)
        assert client.get("/v2/requests/does-not-exist/status").status_code == 404
        request_id = client.post("/v2/seg-swap", json=body).json()["request_id"]
        wait_for(client, request_id)
        other = client.get(f"/v2/requests/{request_id}", headers={"x-api-key": OTHER})
        assert other.status_code == 404 and other.json()["error"] == f"no request {request_id}"
        assert client.get(f"/v2/requests/{request_id}/output", headers={"x-api-key": OTHER}).status_code == 404
        end = time.monotonic() + 10
        while client.get(f"/v2/requests/{request_id}/status").status_code != 404:  # past its 1 s retention
            assert time.monotonic() < end
            time.sleep(0.02)
        assert [record.id for record in client.app.state.jobs.store.purge_expired()] == [request_id]
        assert not (tmp_path / "jobs" / "jobs" / request_id).exists()


def test_cancel_before_start_and_not_after(tmp_path, body, database_url):
    engine = GatedEngine()
    with make_client(tmp_path, engine, database_url=database_url) as client:
        wait_ready(client)
        engine.gate.clear()
        ids = [client.post("/v2/seg-swap", json={**body, "seed": seed}).json()["request_id"] for seed in (1, 2, 3)]
        wait_for(client, ids[0], statuses=("PROCESSING",))
        assert client.delete(f"/v2/requests/{ids[0]}").status_code == 409  # already running
        for request_id in ids[1:]:
            cancelled = client.delete(f"/v2/requests/{request_id}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
        engine.gate.set()
        assert wait_for(client, ids[0])["status"] == "COMPLETED"
        assert client.app.state.work.wait_idle(10)
    assert [s for s in engine.ran if s] == [1]


def test_idempotent_submits_run_once_even_when_concurrent(tmp_path, body, database_url):
    engine = GatedEngine(delay=0.05)
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", database_url=database_url)
    app = create_app(settings, engine)
    with live_server(app) as url:

        async def submit_many():
            headers = {"x-api-key": KEY, "Idempotency-Key": "batch-17"}
            async with httpx.AsyncClient(timeout=30, headers=headers) as client:
                return await asyncio.gather(
                    *(client.post(f"{url}/v2/seg-swap", json={**body, "seed": 5}) for _ in range(6))
                )

        answers = asyncio.run(submit_many())
        assert {r.status_code for r in answers} == {200}
        assert len({r.json()["request_id"] for r in answers}) == 1
        again = httpx.post(
            f"{url}/v2/seg-swap", json={**body, "seed": 5}, headers={"x-api-key": KEY, "Idempotency-Key": "batch-17"}
        )
        assert again.json()["request_id"] == answers[0].json()["request_id"]
        different = httpx.post(
            f"{url}/v2/seg-swap", json={**body, "seed": 6}, headers={"x-api-key": KEY, "Idempotency-Key": "batch-17"}
        )
        assert different.status_code == 409
        wait_for(TestClient(app, headers={"x-api-key": KEY}), answers[0].json()["request_id"])
        assert app.state.work.wait_idle(10)
    assert [s for s in engine.ran if s] == [5]


class WebhookReceiver:
    """Records POSTs; answers 500 to the first `fail_first` of them."""

    def __init__(self, fail_first: int = 1):
        self.calls: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["content-length"]))
                receiver.calls.append((dict(self.headers), data))
                self.send_response(500 if len(receiver.calls) <= receiver.fail_first else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_webhook_arrives_signed_and_is_retried(tmp_path, body):
    receiver = WebhookReceiver(fail_first=1)
    with make_client(tmp_path, webhook_backoff_scale=0.01) as client:
        wait_ready(client)
        request_id = client.post("/v2/seg-swap", json={**body, "webhook_url": receiver.url}).json()["request_id"]
        end = time.monotonic() + 10
        while len(receiver.calls) < 2:
            assert time.monotonic() < end, receiver.calls
            time.sleep(0.02)
    receiver.server.shutdown()
    headers, data = receiver.calls[1]
    payload = json.loads(data)
    assert payload["request_id"] == request_id and payload["status"] == "COMPLETED"
    secret = hashlib.sha256(KEY.encode()).hexdigest().encode()
    expected = "sha256=" + hmac.new(secret, data, hashlib.sha256).hexdigest()
    assert headers["x-segswap-signature"] == expected and receiver.calls[0][1] == data


def test_private_webhook_address_is_refused_at_submit(tmp_path, body):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")  # no allow-list
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as client:
        wait_ready(client)
        for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "file:///etc/passwd"):
            refused = client.post("/v2/seg-swap", json={**body, "webhook_url": url})
            assert refused.status_code == 400 and "webhook_url" in refused.json()["error"]
        private = client.post("/v2/seg-swap", json={**body, "webhook_url": "http://10.0.0.1/hook"}).json()["error"]
        assert private == (
            "field 'webhook_url': the webhook URL points to a non-public address (10.0.0.1: private); "
            "webhook URLs must be public"
        )


@pytest.mark.parametrize("engine_name", ["diffusion/sd15"])
def test_submit_poll_fetch_on_tiny_diffusion_weights(tmp_path, body, tiny_weights, engine_name):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", weights_dir=tiny_weights, model_set="sd15")
    with TestClient(create_app(settings), headers={"x-api-key": KEY}) as client:
        wait_ready(client)
        request_id = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert wait_for(client, request_id)["status"] == "COMPLETED"
        output = client.get(f"/v2/requests/{request_id}/output")
        assert output.status_code == 200 and output.headers["content-type"] == "image/png"
        assert client.get("/health/ready").json()["engine"] == engine_name


def test_a_finished_jobs_progress_is_let_go(tmp_path, body, monkeypatch):
    """The last report (whose preview holds the step's latents, on the device) goes soon after the job ends,
    not when the job is purged days later."""
    import time

    from server.jobs import dispatcher

    monkeypatch.setattr(dispatcher, "PROGRESS_KEPT_S", 0.05)
    with make_client(tmp_path) as client:
        wait_ready(client)
        job = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert wait_for(client, job)["status"] == "COMPLETED"
        end = time.monotonic() + 5
        while job in client.app.state.jobs.progress and time.monotonic() < end:
            time.sleep(0.02)
        assert job not in client.app.state.jobs.progress


# -- event streams ------------------------------------------------------------------------------------------------


def read_events(url: str, job: str, key: str = KEY, events: list | None = None) -> list[tuple[str, dict, float]]:
    """The stream's events as (name, data, time.monotonic() when it arrived), until it ends; appended to `events`
    as they come, if given."""
    events, name = [] if events is None else events, None
    with httpx.stream("GET", f"{url}/v2/requests/{job}/events", headers={"x-api-key": key}, timeout=30) as stream:
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: ")), time.monotonic()))
    return events


def submit(url: str, body: dict, key: str = KEY) -> str:
    answer = httpx.post(f"{url}/v2/seg-swap", json=body, headers={"x-api-key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def test_progress_events_arrive_while_the_job_runs(tmp_path, body):
    """Each step is sent as the engine reports it, not with the end: several arrive well before `completed`."""
    from tests.server.engines import SteppingEngine

    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")
    with live_server(create_app(settings, SteppingEngine(steps=8, delay=0.2))) as url:
        events = read_events(url, submit(url, body))
    assert [name for name, _, _ in events[-2:]] == ["status", "completed"]
    done = events[-1][2]
    early = [data["step"] for name, data, at in events if name == "progress" and at < done - 0.3]
    assert len(early) >= 3 and early == sorted(set(early)), events
    assert [data["step"] for name, data, _ in events if name == "progress"][-1] == 8


def test_a_composite_job_reports_its_one_step_before_it_completes(tmp_path, body):
    """The composite engine has no steps: its stream still shows one progress event, 1 of 1, then the end."""
    with live_server(create_app(Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs"), CompositeEngine())) as url:
        events = read_events(url, submit(url, body))
    names = [name for name, _, _ in events]
    assert names[-1] == "completed" and "progress" in names, events
    progress = [data for name, data, _ in events if name == "progress"]
    assert [(data["step"], data["total"]) for data in progress] == [(1, 1)], events
    assert names.index("progress") < names.index("completed")


def test_a_waiting_stream_reads_nothing_until_its_job_changes(tmp_path, body):
    """A stream sleeps until the dispatcher says its job changed: no store reads while it waits in the queue, and
    the end arrives at once (the only timer is the 15 s keep-alive)."""
    from collections import Counter

    engine = GatedEngine(delay=0.5)  # a job runs a while after it starts: its end is a change of its own
    app = create_app(Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs"), engine)
    with live_server(app) as url:
        engine.gate.clear()
        engine.started.clear()
        submit(url, body)  # holds the worker
        assert engine.started.wait(10)
        waiting = submit(url, {**body, "seed": 7})
        store, reads = app.state.jobs.store, Counter()
        store.get = lambda job_id, get=store.get: reads.update([job_id]) or get(job_id)
        events: list = []
        stream = threading.Thread(target=read_events, args=(url, waiting, KEY, events))
        stream.start()
        time.sleep(2.0)
        assert [name for name, _, _ in events] == ["status"], events
        assert reads[waiting] <= 2, reads  # the route's and the stream's first read; polling made 20 by now
        opened = time.monotonic()
        engine.gate.set()
        stream.join(10)
    assert [data.get("status") for _, data, _ in events] == ["QUEUED", "PROCESSING", "COMPLETED", "COMPLETED"]
    assert events[-1][0] == "completed" and events[-1][2] - opened < 4, events


def test_a_key_holds_at_most_so_many_event_streams(tmp_path, body):
    from contextlib import ExitStack

    engine = GatedEngine()
    settings = Settings(api_keys=[KEY, OTHER], jobs_dir=tmp_path / "jobs", max_streams_per_key=2)
    with live_server(create_app(settings, engine)) as url, ExitStack() as held, httpx.Client(timeout=10) as http:
        engine.gate.clear()
        held.callback(engine.gate.set)
        job, others = submit(url, body), submit(url, body, OTHER)
        events = f"{url}/v2/requests/{job}/events"
        streams = [held.enter_context(http.stream("GET", events, headers={"x-api-key": KEY})) for _ in range(2)]
        assert [stream.status_code for stream in streams] == [200, 200]
        refused = http.get(events, headers={"x-api-key": KEY})
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert "2 event streams open" in refused.json()["error"]
        with http.stream("GET", f"{url}/v2/requests/{others}/events", headers={"x-api-key": OTHER}) as other:
            assert other.status_code == 200  # the cap is per key
        streams[0].close()
        end = time.monotonic() + 5
        while stream_status(http, events) != 200:
            assert time.monotonic() < end, "a closed stream should give its slot back"
            time.sleep(0.05)


def stream_status(http: httpx.Client, events: str) -> int:
    with http.stream("GET", events, headers={"x-api-key": KEY}) as stream:
        return stream.status_code
