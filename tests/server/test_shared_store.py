"""The job store and ledger on both databases, and several replicas sharing one PostgreSQL store."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from PIL import Image

from server.access.credits import CreditLedger
from server.api.app import create_app
from server.jobs.store import DuplicateSubmit, JobStore
from server.serving.priority import BATCH, INTERACTIVE
from server.settings import Settings
from tests.conftest import png_bytes, wait_ready
from tests.server.engines import GatedEngine

KEY = "key-one"
IMAGES = {name: png_bytes(Image.new("RGB", (8, 8))) for name in ("main_image", "mask_image", "object_image")}


def recover_eventually(store: JobStore, timeout_s: float = 10.0) -> tuple[int, list[str]]:
    """store.recover() until it takes something back (at once with SQLite; after a lease with PostgreSQL)."""
    end = time.monotonic() + timeout_s
    while (outcome := store.recover()) == (0, []):
        assert time.monotonic() < end, "nothing recovered"
        time.sleep(0.05)
    return outcome


def test_restart_requeues_an_interrupted_job_once_then_fails_it(tmp_path, database_url):
    stores = []

    def restart() -> JobStore:  # a new server process on the same store; the earlier one died without a word
        stores.append(JobStore(tmp_path / "jobs", database_url, lease_s=0.4))
        return stores[-1]

    try:
        first = restart()
        once, twice = (first.create("k", {"n": n}, IMAGES, 3600) for n in (1, 2))
        assert first.mark_started(once.id) and first.mark_started(twice.id)
        assert first.recover() == (0, [])  # its own running jobs are not taken back
        second = restart()
        assert recover_eventually(second) == (2, [])
        assert {second.get(i).status for i in (once.id, twice.id)} == {"QUEUED"}
        assert second.get(once.id).started_at is None and second.count_pending() == 2
        assert second.mark_started(twice.id)
        third = restart()
        assert recover_eventually(third) == (0, [twice.id])
        failed = third.get(twice.id)
        assert failed.status == "FAILED" and failed.attempts == 2 and "interrupted twice" in failed.error
        assert third.get(once.id).status == "QUEUED" and [r.id for r in third.queued(set(), 5, BATCH)] == [once.id]
        assert third.load_inputs(once.id)["main_image"] == IMAGES["main_image"]
    finally:
        for store in stores:
            store.close()


def test_a_job_keeps_its_priority_class_when_it_is_queued_again_after_a_restart(tmp_path, database_url):
    first = JobStore(tmp_path / "jobs", database_url, lease_s=0.4)
    second = None
    try:
        batch = [first.create("k", {"n": n}, IMAGES, 3600) for n in (1, 2)]
        interactive = first.create("k", {"n": 3}, IMAGES, 3600, priority=INTERACTIVE)
        assert [r.id for r in first.queued(set(), 5, INTERACTIVE)] == [interactive.id]  # not behind the batch
        assert [r.id for r in first.queued({batch[0].id}, 5, BATCH)] == [batch[1].id]
        assert first.mark_started(interactive.id)
        second = JobStore(tmp_path / "jobs", database_url, lease_s=0.4)
        assert recover_eventually(second) == (1, [])
        recovered = second.get(interactive.id)
        assert recovered.status == "QUEUED" and recovered.priority == INTERACTIVE and "priority" not in recovered.params
        assert [r.id for r in second.queued(set(), 5, INTERACTIVE)] == [interactive.id]
    finally:
        for store in (first, second):
            if store is not None:
                store.close()


def test_a_store_made_before_priorities_reads_its_jobs_as_batch_work(tmp_path, database_url):
    store = JobStore(tmp_path / "jobs", database_url)
    try:
        job = store.create("k", {}, IMAGES, 3600, priority=INTERACTIVE)
        store.db.execute("DROP INDEX jobs_to_dispatch")
        store.db.execute("ALTER TABLE jobs DROP COLUMN priority")  # as an earlier version made it
    finally:
        store.close()
    reopened = JobStore(tmp_path / "jobs", database_url)
    try:
        assert reopened.get(job.id).priority == BATCH
        assert [r.id for r in reopened.queued(set(), 5, BATCH)] == [job.id]
    finally:
        reopened.close()


def test_duplicate_idempotency_key_raises_with_the_first_job(tmp_path, database_url):
    store = JobStore(tmp_path / "jobs", database_url)
    try:
        first = store.create("k", {}, IMAGES, 3600, idempotency_key="x", body_hash="h")
        try:
            store.create("k", {}, IMAGES, 3600, idempotency_key="x", body_hash="h2")
        except DuplicateSubmit as duplicate:
            assert duplicate.existing.id == first.id
        else:
            raise AssertionError("no DuplicateSubmit")
        assert store.create("other-key", {}, IMAGES, 3600, idempotency_key="x").id != first.id
        assert len(list((tmp_path / "jobs" / "jobs").iterdir())) == 2  # the refused submit left no files
    finally:
        store.close()


def test_a_live_replica_keeps_its_jobs_and_a_silent_one_loses_them(tmp_path, pg_url):
    alive = JobStore(tmp_path / "jobs", pg_url, lease_s=0.4)
    judge = JobStore(tmp_path / "jobs", pg_url, lease_s=0.4)
    try:
        job = alive.create("k", {}, IMAGES, 3600)
        assert alive.mark_started(job.id)
        end = time.monotonic() + 1.2  # three leases: the judge may judge, and must spare a replica that renews
        while time.monotonic() < end:
            assert alive.recover() == (0, []) and judge.recover() == (0, [])
            time.sleep(0.05)
        assert judge.get(job.id).status == "PROCESSING"
        started = time.monotonic()
        assert recover_eventually(judge) == (1, [])  # `alive` fell silent (a crash: no close)
        assert time.monotonic() - started >= 0.3
        assert judge.mark_started(job.id) and judge.get(job.id).attempts == 2
    finally:
        alive.close()
        judge.close()


def test_concurrent_reserves_never_overspend(tmp_path, database_url):
    ledger = CreditLedger(tmp_path / "credits.sqlite3", database_url)
    try:
        ledger.set_balance("k", 7)
        with ThreadPoolExecutor(16) as pool:
            left = list(pool.map(lambda _: ledger.reserve("k", 1), range(30)))
        assert sorted(x for x in left if x is not None) == list(range(7)) and left.count(None) == 23
        assert ledger.balance("k") == 0 and ledger.refund("k", 2) == 2 and ledger.balance("nobody") is None
    finally:
        ledger.close()


def test_two_replicas_on_one_postgres_run_each_job_once(tmp_path, pg_url, body):
    """Two apps, each with its own worker, share the database and jobs_dir; both dispatch every queued job."""
    engines = [GatedEngine(delay=0.01), GatedEngine(delay=0.01)]
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", database_url=pg_url)
    clients = [TestClient(create_app(settings, engine), headers={"x-api-key": KEY}) for engine in engines]
    with clients[0] as one, clients[1] as two:
        wait_ready(one), wait_ready(two)
        gates: list[bool] = []  # every mark_started answer, both replicas: False means the other one had it
        for client in (one, two):
            store = client.app.state.jobs.store
            store.mark_started = lambda job_id, start=store.mark_started: gates.append(start(job_id)) or gates[-1]
        for engine in engines:
            engine.gate.clear()
        seeds = range(1, 25)
        ids = [
            (one, two)[seed % 2].post("/v2/seg-swap", json={**body, "seed": seed}).json()["request_id"]
            for seed in seeds
        ]
        runners = [client.app.state.jobs for client in (one, two)]
        end = time.monotonic() + 10
        while not all(len(runner.tickets) == 2 for runner in runners):  # each: one job running, one waiting
            assert time.monotonic() < end, "both replicas should be dispatching"
            time.sleep(0.02)
        for engine in engines:
            engine.gate.set()
        end = time.monotonic() + 30
        while Counter(one.get(f"/v2/requests/{i}/status").json()["status"] for i in ids)["COMPLETED"] < len(ids):
            assert time.monotonic() < end
            time.sleep(0.05)
        store = one.app.state.jobs.store
        assert {store.get(i).attempts for i in ids} == {1}  # started once each
        for request_id in ids:  # either replica serves any result: one database, one jobs_dir
            assert two.get(f"/v2/requests/{request_id}/output").status_code == 200
    runs = Counter(seed for engine in engines for seed in engine.ran if seed)  # seed 0: warm-up
    assert runs == Counter(seeds)
    assert gates.count(True) == len(ids) and gates.count(False) > 0, "the replicas should have raced for some jobs"
    assert all(len([s for s in engine.ran if s]) > 0 for engine in engines), "both replicas should have run jobs"


def test_replicas_starting_together_create_the_schema_once(tmp_path, pg_url):
    barrier = threading.Barrier(4)

    def open_store(_):
        barrier.wait()
        return JobStore(tmp_path / "jobs", pg_url), CreditLedger(tmp_path / "c.sqlite3", pg_url)

    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(open_store, range(4)))  # none raised (a duplicate CREATE would)
    try:
        first_store, first_ledger = opened[0]
        job = first_store.create("k", {}, IMAGES, 3600)
        first_ledger.set_balance("k", 3)
        for store, ledger in opened[1:]:  # one schema: every replica sees the same rows
            assert store.get(job.id).id == job.id and ledger.balance("k") == 3
        tables = first_store.db.execute(
            "SELECT COUNT(*) AS n FROM pg_tables WHERE tablename IN ('jobs', 'replicas', 'credits')"
        ).fetchone()["n"]
        assert tables == 3
    finally:
        for store, ledger in opened:
            store.close()
            ledger.close()


def test_a_stream_on_one_replica_hears_the_end_of_a_job_another_runs(tmp_path, pg_url, body):
    """Only the replica running a job is told when it changes; a stream on another replica reads the shared store
    every few seconds, so it ends soon after the job does (not at its 15 s keep-alive)."""
    runner, idle = GatedEngine(), GatedEngine()
    idle.gate.clear()  # never warm: this replica dispatches nothing, the other runs the job
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path / "jobs", database_url=pg_url)
    one = TestClient(create_app(settings, runner), headers={"x-api-key": KEY})
    two = TestClient(create_app(settings, idle), headers={"x-api-key": KEY})
    with one, two:
        wait_ready(one)
        runner.gate.clear()
        job = one.post("/v2/seg-swap", json=body).json()["request_id"]
        threading.Timer(1.0, runner.gate.set).start()
        started = time.monotonic()
        with two.stream("GET", f"/v2/requests/{job}/events") as stream:
            text = "".join(stream.iter_text())
        took = time.monotonic() - started
        idle.gate.set()
    assert "event: completed" in text and took < 8, (took, text)
