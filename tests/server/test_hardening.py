"""Hardening, round 2: each finding of the adversarial pass, as the behaviour that fixes it."""

from __future__ import annotations

import base64
import gc
import io
import json
import socket
import time
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipelines import CompositeEngine, InvalidInput, WeightsError
from server.access.credits import open_ledger
from server.api.app import create_app
from server.api.live_server import free_port, live_server
from server.cli.main import main
from server.settings import Settings
from tests.conftest import b64, png_bytes, rect_mask, wait_ready
from tests.server.test_v2 import WebhookReceiver, wait_for

KEY = "hardening-key-0123"


class FailingEngine:
    """Fails every job after holding its images, as an engine that hits bad input deep inside would."""

    name = "failing"

    def __init__(self, error: Exception | None = None):
        self.error = error or InvalidInput("the engine could not use this object", "object_image")

    def swap(self, job, progress=None):
        if job.steps == 2:  # the server's warm-up swap
            return job.main_image
        kept = [np.asarray(job.main_image), np.asarray(job.object_image)]  # live in this frame when it raises
        assert kept
        raise self.error


class HugeOutputEngine:
    """Returns an image wider than WEBP can hold, whatever the input (a failure only the encoder sees)."""

    name = "huge"

    def swap(self, job, progress=None):
        return Image.new("RGB", (17000, 2))


def keyed_settings(tmp_path, capsys, monkeypatch, **overrides) -> tuple[Settings, dict[str, str]]:
    keys_file, ledger = tmp_path / "keys.toml", tmp_path / "credits.sqlite3"
    monkeypatch.setenv("SEGSWAP_CREDITS_DB", str(ledger))
    secrets = {}
    for key_id, extra in [
        ("broke", ["--credits", "0"]),
        ("one", ["--credits", "1"]),
        ("jobs", ["--endpoint", "jobs"]),
        ("legacy", ["--endpoint", "/v2/seg-swap"]),
    ]:
        assert main(["keys", "--keys-file", str(keys_file), "add", key_id, *extra]) == 0
        secrets[key_id] = capsys.readouterr().out.strip()
    settings = Settings(keys_file=keys_file, credits_db=ledger, jobs_dir=tmp_path / "jobs", **overrides)
    return settings, secrets


def balance(settings: Settings, key_id: str) -> int | None:
    ledger = open_ledger(settings)
    try:
        return ledger.balance(key_id)
    finally:
        ledger.close()


# 1. metering -------------------------------------------------------------------------------------------------------


def test_v2_jobs_are_charged_at_submit_and_refunded_when_they_fail(tmp_path, capsys, monkeypatch, body):
    settings, secrets = keyed_settings(tmp_path, capsys, monkeypatch)
    with TestClient(create_app(settings, FailingEngine())) as client:
        wait_ready(client)
        broke = client.post("/v2/seg-swap", json=body, headers={"x-api-key": secrets["broke"]})
        assert broke.status_code == 406 and "insufficient credits" in broke.json()["error"]
        submitted = client.post("/v2/seg-swap", json=body, headers={"x-api-key": secrets["one"]})
        assert submitted.status_code == 200 and submitted.headers["x-remaining-credits"] == "0"
        assert balance(settings, "one") == 0
        client.headers["x-api-key"] = secrets["one"]
        assert wait_for(client, submitted.json()["request_id"])["status"] == "FAILED"
        end = time.monotonic() + 5
        while balance(settings, "one") != 1:
            assert time.monotonic() < end, "the failed job's charge was not refunded"
            time.sleep(0.02)


def test_a_cancelled_or_expired_unrun_job_is_refunded(tmp_path, capsys, monkeypatch, body):
    from tests.server.engines import GatedEngine

    engine = GatedEngine()
    engine.gate.clear()
    settings, secrets = keyed_settings(tmp_path, capsys, monkeypatch)
    with TestClient(create_app(settings, engine), headers={"x-api-key": secrets["one"]}) as client:
        engine.gate.set()
        wait_ready(client)
        engine.gate.clear()  # the worker is held on the first job; the second waits in the store
        first = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert engine.started.wait(5)
        ledger = open_ledger(settings)
        ledger.set_balance("one", 1)
        second = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert balance(settings, "one") == 0
        assert client.delete(f"/v2/requests/{second}").json()["status"] == "CANCELLED"
        assert balance(settings, "one") == 1
        third = client.post("/v2/seg-swap", json=body).json()["request_id"]
        runner = client.app.state.jobs
        runner.store.db.execute("UPDATE jobs SET expires_at = 0 WHERE id = ?", (third,))
        assert client.portal.call(runner.purge_once) == 1
        assert balance(settings, "one") == 1
        engine.gate.set()
        wait_for(client, first)
        ledger.close()


class GatedRefusingEngine:
    """Held by `gate` like GatedEngine; refuses the jobs asking for "refuse" (a job that fails)."""

    name = "gated-refusing"

    def __init__(self):
        from tests.server.engines import GatedEngine

        self.held = GatedEngine()

    def swap(self, job, progress=None):
        if job.prompt == "refuse":
            raise InvalidInput("the object image has nothing to place", "object_image")
        return self.held.swap(job, progress)


def test_expiry_refunds_only_the_job_that_never_ran(tmp_path, capsys, monkeypatch, body):
    """A completed job was delivered; a failed or cancelled one got its charge back when it ended: their expiry
    leaves the balance as it is. Only the one that expired still queued is refunded."""
    engine = GatedRefusingEngine()
    settings, secrets = keyed_settings(tmp_path, capsys, monkeypatch)
    with TestClient(create_app(settings, engine), headers={"x-api-key": secrets["one"]}) as client:
        wait_ready(client)
        open_ledger(settings).set_balance("one", 10)
        ended = {}
        for status, prompt in (("COMPLETED", "a cup"), ("FAILED", "refuse")):
            ended[status] = client.post("/v2/seg-swap", json={**body, "prompt": prompt}).json()["request_id"]
            assert wait_for(client, ended[status])["status"] == status
        engine.held.gate.clear()  # the worker is held on `running`; the next two wait in the store
        running = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert engine.held.started.wait(5)
        ended["CANCELLED"] = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert client.delete(f"/v2/requests/{ended['CANCELLED']}").json()["status"] == "CANCELLED"
        queued = client.post("/v2/seg-swap", json=body).json()["request_id"]
        assert balance(settings, "one") == 10 - 3  # completed, running, queued
        runner = client.app.state.jobs
        for job_id in (*ended.values(), queued):
            runner.store.db.execute("UPDATE jobs SET expires_at = 0 WHERE id = ?", (job_id,))
        assert client.portal.call(runner.purge_once) == 4
        assert balance(settings, "one") == 10 - 2  # the queued job's charge back, and no other
        engine.held.gate.set()
        assert wait_for(client, running)["status"] == "COMPLETED"
        assert balance(settings, "one") == 10 - 2


# 2. permissions by endpoint family ---------------------------------------------------------------------------------


def test_a_key_for_the_jobs_family_can_submit_poll_fetch_and_cancel_but_not_swap(tmp_path, capsys, monkeypatch, body):
    settings, secrets = keyed_settings(tmp_path, capsys, monkeypatch)
    with TestClient(create_app(settings, CompositeEngine())) as client:
        wait_ready(client)
        for key in (secrets["jobs"], secrets["legacy"]):  # a family name, or a path written by an older version
            client.headers["x-api-key"] = key
            request_id = client.post("/v2/seg-swap", json=body).json()["request_id"]
            assert wait_for(client, request_id)["status"] == "COMPLETED"
            assert client.get(f"/v2/requests/{request_id}").status_code == 200
            assert client.get(f"/v2/requests/{request_id}/output").status_code == 200
            assert client.delete(f"/v2/requests/{request_id}").status_code == 409  # reached the route: not 403
            assert client.post("/v1/seg-swap", json=body).status_code == 403


def test_keys_add_help_lists_the_families_and_refuses_unknown_endpoints(tmp_path, capsys):
    assert main(["keys", "add", "--help"]) == 0
    assert "swap: /v1/seg-swap" in capsys.readouterr().out.replace("\n", " ")
    assert main(["keys", "--keys-file", str(tmp_path / "k.toml"), "add", "x", "--endpoint", "/v3/nothing"]) == 2
    assert "unknown endpoint" in capsys.readouterr().err


# 3. webhooks ---------------------------------------------------------------------------------------------------------


def test_a_refused_webhook_connection_is_retried_like_a_5xx(tmp_path, body, caplog):
    port = free_port()  # nothing listens here: every attempt is refused
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", fetch_allow=["127.0.0.1"], webhook_backoff_scale=0)
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as client:
        wait_ready(client)
        request_id = client.post("/v2/seg-swap", json=body).json()["request_id"]
        wait_for(client, request_id)
        runner = client.app.state.jobs
        record = runner.store.get(request_id)
        record = type(record)(**{**record.__dict__, "webhook_url": f"http://127.0.0.1:{port}/hook"})
        assert client.portal.call(runner.deliver_webhook, record) is False
    attempts = [r for r in caplog.records if "webhook for job" in r.getMessage()]
    assert len(attempts) == 6 and all("ConnectError" in r.getMessage() for r in attempts)


def test_a_job_failed_by_restart_recovery_is_announced_and_refunded(tmp_path, capsys, monkeypatch, body):
    from server.jobs.store import JobStore

    receiver = WebhookReceiver(fail_first=0)
    settings, secrets = keyed_settings(tmp_path, capsys, monkeypatch, fetch_allow=["127.0.0.1"])
    store = JobStore(settings.jobs_dir)
    inputs = {name: png_bytes(Image.new("RGB", (8, 8))) for name in ("main_image", "mask_image", "object_image")}
    params = {"seed": 1, "image_format": "png", "image_quality": 95, "_webhook_secret": "s", "_charged": 1}
    record = store.create("one", params, inputs, 3600, webhook_url=receiver.url)
    store.db.execute("UPDATE jobs SET status = 'PROCESSING', attempts = 2, owner = 'gone' WHERE id = ?", (record.id,))
    store.close()
    open_ledger(settings).set_balance("one", 0)
    with TestClient(create_app(settings, CompositeEngine())) as client:
        wait_ready(client)
        end = time.monotonic() + 10
        while not receiver.calls or balance(settings, "one") != 1:
            assert time.monotonic() < end, (receiver.calls, balance(settings, "one"))
            time.sleep(0.02)
    receiver.server.shutdown()
    payload = json.loads(receiver.calls[0][1])
    assert payload["request_id"] == record.id and payload["status"] == "FAILED"


# 4. outputs the format cannot hold -----------------------------------------------------------------------------------


def test_an_output_too_wide_for_its_format_is_refused_before_any_work(tmp_path, body):
    wide = {
        **body,
        "main_image": b64(Image.new("RGB", (16384, 2))),
        "mask_image": b64(rect_mask((16384, 2), (0, 0, 9, 1))),
    }
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as client:
        wait_ready(client)
        for path in ("/v1/seg-swap", "/v2/seg-swap"):
            answer = client.post(path, json={**wide, "image_format": "webp"})
            assert answer.status_code == 400, answer.text
            assert "image_format" in answer.json()["error"] and "16383" in answer.json()["error"]
        assert client.post("/v1/seg-swap", json={**wide, "image_format": "png"}).status_code == 200


def test_a_result_that_cannot_be_written_refunds_and_fails_the_job_with_its_reason(tmp_path, capsys, monkeypatch, body):
    settings, secrets = keyed_settings(tmp_path, capsys, monkeypatch)
    app = create_app(settings, HugeOutputEngine())
    with TestClient(app, headers={"x-api-key": secrets["one"]}, raise_server_exceptions=False) as client:
        wait_ready(client)
        v1 = client.post("/v1/seg-swap", json={**body, "image_format": "webp"})
        assert v1.status_code == 500 and v1.headers["x-remaining-credits"] == "1"
        request_id = client.post("/v2/seg-swap", json={**body, "image_format": "webp"}).json()["request_id"]
        failed = wait_for(client, request_id)
        assert failed["status"] == "FAILED" and "could not be written as webp" in failed["error"]
        end = time.monotonic() + 5
        while balance(settings, "one") != 1:
            assert time.monotonic() < end
            time.sleep(0.02)


# 5. memory held by failed requests -----------------------------------------------------------------------------------


def traced_once_idle(work, since: int, expected_below: int) -> int:
    """Memory traced since `since` once the queue is idle and the worker has let go of its last job: a request's
    answer is sent when its job settles, a moment before the worker drops its reference. Waits up to 5 s for it to
    fall below `expected_below`; without a garbage collection, what a reference cycle holds never falls."""
    assert work.wait_idle(10)
    end = time.monotonic() + 5
    while (held := tracemalloc.get_traced_memory()[0] - since) >= expected_below and time.monotonic() < end:
        time.sleep(0.05)
    return held


def test_failing_requests_release_their_images_without_a_garbage_collection(tmp_path, body):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8))
    heavy = {**body, "main_image": b64(big), "mask_image": b64(rect_mask(big.size, (100, 100, 400, 400)))}
    data = json.dumps(heavy).encode()  # encoded once: the client's own copies are not what is measured
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", max_body_bytes=50_000_000)
    one_image = 1500 * 1500 * 3
    with TestClient(create_app(settings, FailingEngine()), headers={"x-api-key": KEY}) as client:

        def post():
            return client.post("/v1/seg-swap", content=data, headers={"content-type": "application/json"})

        wait_ready(client)
        assert post().status_code == 400  # warm: first-use allocations
        gc.collect()
        gc.disable()
        try:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(6):
                assert post().status_code == 400
            held = traced_once_idle(client.app.state.work, before, one_image)
        finally:
            tracemalloc.stop()
            gc.enable()
    assert held < one_image, f"{held / 1e6:.1f} MB still held after 6 failing requests"


# 6. public answers name no server paths ------------------------------------------------------------------------------


def test_a_broken_model_set_is_reported_without_paths(tmp_path, body):
    def broken(device):
        raise WeightsError(f"cannot load model set {tmp_path}/sd15: {tmp_path}/sd15/unet/model.safetensors truncated")

    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings, engine_factory=broken), headers={"x-api-key": KEY}) as client:
        end = time.monotonic() + 10
        while "failed" not in (ready := client.get("/health/ready").json()).get("error", ""):
            assert time.monotonic() < end, ready
            time.sleep(0.02)
        swap = client.post("/v1/seg-swap", json=body)
    for answer in (ready["error"], swap.json()["error"]):
        assert str(tmp_path) not in answer and "/" not in answer.replace("/health", "")
        assert "weights" in answer and "server log" in answer
    assert swap.status_code == 503


# 7, 8, 16. bodies that used to answer 500, and the request id on a 500 ---------------------------------------------


@pytest.fixture()
def client(tmp_path):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as test_client:
        wait_ready(test_client)
        yield test_client


def test_deeply_nested_json_is_a_400(client):
    deep = "[" * 5000 + "]" * 5000
    answer = client.post(
        "/v1/seg-swap", content=b'{"prompt": ' + deep.encode() + b"}", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]


def test_a_field_sent_as_a_file_and_a_value_is_a_400_naming_it(client, scene, mask, obj):
    files = [
        ("main_image", ("a.png", png_bytes(scene), "image/png")),
        ("mask_image", ("m.png", png_bytes(mask))),
        ("object_image", ("o.png", png_bytes(obj))),
    ]
    answer = client.post("/v1/seg-swap", files=files, data={"main_image": b64(scene)})
    assert answer.status_code == 400 and "field 'main_image'" in answer.json()["error"]
    assert "twice" in answer.json()["error"]


def test_an_unexpected_500_carries_the_request_id_its_body_points_to(tmp_path, body):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")
    app = create_app(settings, FailingEngine(RuntimeError("a bug")))
    with TestClient(app, headers={"x-api-key": KEY}, raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        answer = test_client.post("/v1/seg-swap", json=body, headers={"x-request-id": "trace-me-42"})
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "trace-me-42"
    assert "x-request-id" in answer.json()["error"] and "a bug" not in answer.text


# 9. slow clients -------------------------------------------------------------------------------------------------


def test_slow_headers_are_disconnected_and_a_slow_body_gets_408(tmp_path):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", header_timeout_s=0.5, body_timeout_s=0.5)
    with live_server(create_app(settings, CompositeEngine())) as url:
        port = int(url.rsplit(":", 1)[1])
        slow_headers = socket.create_connection(("127.0.0.1", port))
        slow_headers.sendall(b"POST /v1/seg-swap HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        slow_headers.settimeout(5)
        start = time.monotonic()
        assert slow_headers.recv(1024) == b""  # closed by the server
        assert time.monotonic() - start < 3
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(
            b"POST /v1/seg-swap HTTP/1.1\r\nHost: x\r\nx-api-key: "
            + KEY.encode()
            + b'\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"prompt"'
        )
        slow_body.settimeout(5)
        answer = b""
        while chunk := slow_body.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer
        slow_headers.close()
        slow_body.close()


def test_the_next_request_on_a_kept_alive_connection_has_the_same_header_deadline(tmp_path):
    """After a response the connection waits for the next request's headers under the same deadline: a client that
    trickles them in, a line at a time, is cut off (uvicorn's own keep-alive timer stops at the first byte)."""
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", header_timeout_s=0.5)
    with live_server(create_app(settings, CompositeEngine())) as url:
        connection = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        connection.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.settimeout(5)
        first = b""
        while not first.endswith(b'{"status":"live"}'):
            first += connection.recv(4096) or pytest.fail(f"closed after {first!r}")
        assert first.startswith(b"HTTP/1.1 200"), first
        connection.settimeout(0.1)
        start, closed = time.monotonic(), False
        try:
            connection.sendall(b"GET /health/live HTTP/1.1\r\n")
            while not closed and time.monotonic() - start < 3:
                connection.sendall(b"x-trickle: 1\r\n")  # each line well inside the deadline; never the end
                try:
                    closed = connection.recv(1024) == b""
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        finally:
            connection.close()
    assert closed and time.monotonic() - start < 2


# 10. one pixel limit -----------------------------------------------------------------------------------------------


def test_the_configured_pixel_limit_is_the_only_one():
    from server.inputs.decode import decode_image

    large = png_bytes(Image.new("L", (9500, 9500)))  # 90.25 MP: above Pillow's own bomb warning (89.5 MP)
    assert decode_image(large, "main_image", 100_000_000).size == (9500, 9500)
    from server.errors import TooLarge

    with pytest.raises(TooLarge, match="more than 90000000 pixels"):
        decode_image(large, "main_image", 90_000_000)


# 11. /docs offline, under a CSP ------------------------------------------------------------------------------------


def test_docs_are_served_from_the_package_under_a_csp(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
    for asset in (
        "/docs/assets/swagger-ui-5.35.0/swagger-ui-bundle.js",
        "/docs/assets/init.js",
        "/docs/assets/swagger-ui-5.35.0/swagger-ui.css",
    ):
        assert client.get(asset).status_code == 200, asset
    schema = client.get("/openapi.json").json()
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])


# 13. disk: inputs kept as received, per-key caps, delete on fetch ---------------------------------------------------


def test_v2_keeps_inputs_as_received_and_caps_each_key(tmp_path, body):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", max_stored_jobs_per_key=2, delete_on_fetch=True)
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as test_client:
        wait_ready(test_client)
        first = test_client.post("/v2/seg-swap", json=body).json()["request_id"]
        folder = tmp_path / "jobs" / "jobs" / first
        assert (folder / "main_image").read_bytes() == base64.b64decode(body["main_image"])
        wait_for(test_client, first)
        second = test_client.post("/v2/seg-swap", json=body).json()["request_id"]
        capped = test_client.post("/v2/seg-swap", json=body)
        assert capped.status_code == 429 and "stored jobs" in capped.json()["error"]
        assert test_client.get(f"/v2/requests/{first}/output").status_code == 200
        end = time.monotonic() + 5
        while folder.exists():  # deleted once fetched
            assert time.monotonic() < end
            time.sleep(0.02)
        assert test_client.get(f"/v2/requests/{first}/status").status_code == 404
        wait_for(test_client, second)
        assert test_client.post("/v2/seg-swap", json=body).status_code == 200  # room again


def test_the_byte_cap_per_key(tmp_path, body):
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", max_stored_bytes_per_key=1024)
    with TestClient(create_app(settings, CompositeEngine()), headers={"x-api-key": KEY}) as test_client:
        wait_ready(test_client)
        answer = test_client.post("/v2/seg-swap", json=body)
        assert answer.status_code == 429 and "bytes" in answer.json()["error"]


# 14. a stored input that does not decode fails its job ----------------------------------------------------------------


def test_an_undecodable_stored_input_fails_the_job_once(tmp_path, body, caplog):
    from server.jobs.store import JobStore

    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs")
    store = JobStore(settings.jobs_dir)
    params = {"seed": 1, "image_format": "png", "image_quality": 95, "_webhook_secret": "s"}
    inputs = {"main_image": b"not an image", "mask_image": b"", "object_image": b""}
    record = store.create("env-key", params, inputs, 3600)
    store.close()
    with TestClient(create_app(settings, CompositeEngine())) as test_client:
        wait_ready(test_client)
        end = time.monotonic() + 5
        while test_client.app.state.jobs.store.get(record.id).status != "FAILED":
            assert time.monotonic() < end
            time.sleep(0.02)
        time.sleep(0.3)
    assert sum("stored inputs unusable" in r.getMessage() for r in caplog.records) == 1


# 15. masks of another size ---------------------------------------------------------------------------------------


def test_a_mask_of_another_aspect_is_a_400_naming_both_sizes(client, body):
    answer = client.post("/v1/seg-swap", json={**body, "mask_image": b64(rect_mask((80, 80), (10, 10, 40, 40)))})
    assert answer.status_code == 400
    assert "80x80" in answer.json()["error"] and "96x64" in answer.json()["error"]
    scaled = client.post("/v1/seg-swap", json={**body, "mask_image": b64(rect_mask((48, 32), (15, 10, 30, 22)))})
    assert scaled.status_code == 200


def test_a_mask_drawn_on_an_exif_turned_photo_is_turned_with_it(client, body):
    stored = Image.new("RGB", (64, 96), (90, 90, 90))  # as stored; EXIF 6: shown turned, 96 x 64
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes())
    mask = rect_mask((64, 96), (0, 0, 63, 20))  # drawn on the stored pixels: their top band
    answer = client.post(
        "/v1/seg-swap",
        json={
            **body,
            "main_image": base64.b64encode(buffer.getvalue()).decode(),
            "mask_image": b64(mask),
            "growmask": 0,
            "mode": "pattern",
            "horizontal_repeat": 2,
        },
    )
    assert answer.status_code == 200, answer.text
    out = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"), dtype=int)
    assert out.shape[:2] == (64, 96)
    changed = np.abs(out - 90).sum(axis=2) > 30
    assert changed[:, -21:].mean() > 0.9 and changed[:, :60].mean() < 0.02  # orientation 6: the top band -> right


# 17. the CLI answers in one line -------------------------------------------------------------------------------------


def test_cli_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch):
    import sys

    keys = str(tmp_path / "k.toml")
    assert main(["keys", "--keys-file", keys, "add", "a"]) == 0
    capsys.readouterr()
    assert main(["keys", "--keys-file", keys, "credit", "a", "-5"]) == 2
    assert main(["keys", "--keys-file", keys, "credit", "a", "7"]) == 0
    assert "now has 7 credits" in capsys.readouterr().err
    missing = ["swap", "--main", "a.png", "--mask", "b.png", "--object", "c.png", "-o", str(tmp_path / "no" / "x.png")]
    assert main(missing) == 2
    assert capsys.readouterr().err.count("\n") == 1

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return sys.__stdout__.fileno()

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    monkeypatch.setattr("os.dup2", lambda *args: None)
    assert main(["keys", "--keys-file", keys, "list"]) == 2
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "pipelines.models.tiny", None)  # as if torch and diffusers were not installed
    assert main(["weights", "make-tiny", "--out", str(tmp_path / "t")]) == 2
    assert "diffusion install" in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_so_before_loading_anything(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--engine", "composite", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "worker(s)" not in err


# 18. the key as a bearer token ---------------------------------------------------------------------------------------


def test_the_key_may_come_as_a_bearer_token(client, body):
    headers = {"x-api-key": "", "authorization": f"Bearer {KEY}"}
    assert client.post("/v1/seg-swap", json=body, headers=headers).status_code == 200
    wrong = client.post("/v1/seg-swap", json=body, headers={"x-api-key": "", "authorization": "Bearer nope"})
    assert wrong.status_code == 401
