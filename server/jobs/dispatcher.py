"""Running v2 jobs: from the durable store into the shared work queue, and their webhooks.

The backlog lives in the store, not in memory: the dispatcher keeps only a few v2 jobs of each
priority class in the work queue at a time (enough to keep every worker busy), so a batch of
thousands never fills the queue that v1 requests also wait in, and an interactive v2 job never
waits in the store behind that batch: the work queue orders what it holds (server/serving/priority.py).

Replicas sharing one store (PostgreSQL) may dispatch the same job: the store's `mark_started`,
called by the worker just before the engine runs, lets only one of them run it; the others
drop their copy. `recover` runs every few seconds, not only at start: it renews this
replica's lease and takes back the jobs of replicas that are gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from functools import partial

from PIL import Image

from pipelines import SegswapError, SwapJob, build_job
from server.access.credits import CreditLedger
from server.errors import BadRequest, ServiceError, Unavailable
from server.inputs.decode import decode_inputs
from server.inputs.encode import MEDIA_TYPES, encode_output
from server.inputs.fetch import post_pinned
from server.inputs.metadata import input_digests, output_record
from server.jobs.store import JobRecord, JobStore
from server.jobs.watchers import JobWatchers
from server.serving.lifecycle import Lifecycle
from server.serving.metrics import Metrics
from server.serving.priority import PRIORITIES, Priority
from server.serving.served_sets import LOADED, UNLOADED, ServedSets
from server.serving.work_queue import Dropped, QueueFull, Ticket, WorkQueue
from server.settings import Settings

PROGRESS_KEPT_S = 60.0

log = logging.getLogger(__name__)
RECOVER_EVERY_S = 5.0  # well under the store's lease (LEASE_S), which this renews
WEBHOOK_DELAYS_S = (1, 2, 4, 8, 16)  # waits between attempts: 6 attempts over about half a minute


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        sets: ServedSets,
        lifecycle: Lifecycle,
        settings: Settings,
        metrics: Metrics,
        ledger: CreditLedger | None = None,
    ):
        self.store, self.sets, self.lifecycle, self.settings, self.metrics = store, sets, lifecycle, settings, metrics
        self.ledger = ledger  # where a failed, cancelled or unrun job's charge goes back
        self.tickets: dict[str, Ticket | None] = {}  # dispatched jobs (None: inputs still loading)
        self.classes: dict[str, Priority] = {}  # the priority of each dispatched job
        self.queues: dict[str, WorkQueue] = {}  # the queue each dispatched job waits in (its model set's)
        self.parked: dict[str, str | None] = {}  # queued jobs whose model set is not loaded now, by id: the set
        # What the jobs run here have reported, written by the worker thread as the engine works; the last report
        # stays PROGRESS_KEPT_S after the job ends (the event stream sends it with the end)
        self.progress: dict[str, JobProgress] = {}
        self.watchers = JobWatchers(settings.max_streams_per_key)  # the event streams, woken by every change here
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        next_recovery = 0.0
        while True:
            try:
                if time.monotonic() >= next_recovery:
                    requeued, failed = await asyncio.to_thread(self.store.recover)
                    next_recovery = time.monotonic() + RECOVER_EVERY_S
                    if requeued or failed:
                        log.info(
                            "job store recovered: %d interrupted job(s) queued again, %d failed", requeued, len(failed)
                        )
                    for job_id in failed:
                        await self._settled_as_failed(job_id)
                    self._retry_lazy_loads()
                if self.lifecycle.ready and not self.lifecycle.draining:
                    await self._dispatch()
            except Exception:  # the database is out of reach for a while: keep trying, do not stop dispatching
                log.exception("job store unavailable")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def purge_forever(self, every_s: float = 600.0) -> None:
        while True:
            await self.purge_once()
            await asyncio.sleep(every_s)

    async def purge_once(self) -> int:
        """Delete the jobs past their retention; a job that expired before it ran gets its charge back."""
        try:
            purged = await asyncio.to_thread(self.store.purge_expired)
            for record in purged:
                self.watchers.notify(record.id)
                if record.status == "QUEUED":
                    await asyncio.to_thread(self._refund, record)
        except Exception:
            log.exception("job store unavailable; purging later")
            return 0
        if purged:
            log.info("purged %d expired job(s)", len(purged))
        return len(purged)

    async def _dispatch(self) -> None:
        self.parked = {job: name for job, name in self.parked.items() if self._state(name) != LOADED}
        for priority in PRIORITIES:
            room = self.sets.workers + 1 - sum(each == priority for each in self.classes.values())
            if room <= 0:
                continue
            for record in await asyncio.to_thread(
                self.store.queued, set(self.tickets) | set(self.parked), room, priority
            ):
                self.tickets[record.id], self.classes[record.id] = None, priority
                self._spawn(self._execute(record))

    def _retry_lazy_loads(self) -> None:
        """Lazy loading: a job parked because its set could not make room (the sets loaded were busy) tries again
        every few seconds, not only when an admin loads the set: its pick loads it once those sets are idle. A
        failed set waits for an admin's load."""
        if self.sets.load_on_demand is not None:
            self.parked = {job: name for job, name in self.parked.items() if self._state(name) != UNLOADED}

    def _state(self, name: str | None) -> str:
        return (self.sets.default if name is None else self.sets.get(name)).state

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job no worker has started; True if it is now CANCELLED."""
        ticket, work = self.tickets.get(job_id), self.queues.get(job_id)
        if ticket is not None and work is not None and not work.cancel(ticket, "cancelled by the client"):
            return False
        if not self.store.cancel(job_id):
            return False
        self.watchers.notify(job_id)
        self._refund(self.store.get(job_id))
        return True

    async def fail(self, job_id: str, reason: str) -> bool:
        """Fail a job that has not ended, refund its charge; True if this call failed it."""
        if not await asyncio.to_thread(self.store.fail, job_id, reason):
            return False
        self.watchers.notify(job_id)
        await asyncio.to_thread(self._refund, await asyncio.to_thread(self.store.get, job_id))
        return True

    async def _settled_as_failed(self, job_id: str) -> None:
        """A job failed elsewhere (restart recovery): its refund and its webhook."""
        self.watchers.notify(job_id)
        record = await asyncio.to_thread(self.store.get, job_id)
        await asyncio.to_thread(self._refund, record)
        if record and record.webhook_url:
            self._spawn(self.deliver_webhook(record))

    def _refund(self, record: JobRecord | None) -> None:
        charged = record.params.get("_charged", 0) if record else 0
        if charged and self.ledger is not None:
            self.ledger.refund(record.key_id, charged)

    async def _execute(self, record: JobRecord) -> None:
        try:
            settled = await self._run_once(record)
        finally:
            self.tickets.pop(record.id, None)
            self.classes.pop(record.id, None)
            self.queues.pop(record.id, None)
            self.wake()
        if not settled:  # not run here (queue full, cancelled, or another replica started it): not ours to announce
            return
        final = await asyncio.to_thread(self.store.get, record.id)
        if final and final.webhook_url and final.status in ("COMPLETED", "FAILED"):
            self._spawn(self.deliver_webhook(final))

    async def _run_once(self, record: JobRecord) -> bool:
        """Run the job on this server; True if this call completed or failed it."""
        params = record.params
        try:
            job, inputs = await asyncio.to_thread(self._load_job, record)
        except Exception as exc:  # gone, unreadable or undecodable: fail it rather than retry it forever
            log.error("job %s: stored inputs unusable: %s", record.id, exc)
            await self.fail(record.id, "the job's stored inputs could not be read")
            return True
        deadline = time.monotonic() + self.settings.job_timeout_s
        try:
            work = (await self.sets.pick_async(params.get("model_set"))).work
        except BadRequest as exc:  # a set served when it was submitted, not since this server started
            await self.fail(record.id, exc.message)
            return True
        except Unavailable:  # its set was unloaded (or failed to load) since: the job waits for it, still queued
            self.parked[record.id] = params.get("model_set")
            return False
        try:
            ticket = work.submit(
                job,
                deadline,
                on_start=lambda: self._mark_started(record.id),
                on_progress=self.progress.setdefault(record.id, JobProgress(partial(self.watchers.notify, record.id))),
                priority=record.priority,
                since=record.created_at,  # its place among jobs whose inputs load side by side
            )
        except (QueueFull, Unavailable):
            return False  # stays QUEUED; dispatched again when there is room (or by the next start)
        self.tickets[record.id], self.queues[record.id] = ticket, work
        job_seed = job.seed
        try:
            outcome = await ticket.future
        except Dropped as dropped:
            if not dropped.expired:
                return False  # cancelled
            await self.fail(record.id, f"the job did not run within {self.settings.job_timeout_s:g} s")
            return True
        except SegswapError as exc:
            exc.__traceback__ = None  # it would hold this frame, and the job's images, in a cycle
            await self.fail(record.id, str(exc))
            return True
        except Exception:
            log.exception("job %s failed", record.id)
            await self.fail(record.id, "internal error while running the job")
            return True
        finally:
            del ticket, job  # the future holds the engine's exception, if any
            # The last report (and its preview's latents, on the device) goes a little after the end: time for
            # the event streams to send it, without holding one per finished job until it is purged.
            asyncio.get_running_loop().call_later(PROGRESS_KEPT_S, self.progress.pop, record.id, None)
        self.metrics.queue_wait_seconds.observe(outcome.queue_s)
        self.metrics.stage_seconds.labels("engine").observe(outcome.engine_s)
        self.metrics.images.labels(outcome.engine).inc()
        carried = output_record(self.settings.output_metadata, params, job_seed, outcome.engine, inputs)
        try:
            data = await asyncio.to_thread(
                encode_output, outcome.image, params["image_format"], params["image_quality"], carried, self.settings
            )
        except Exception as exc:  # the format's own limit or error, in the encoder's words (no paths in them)
            log.exception("job %s: the result could not be encoded", record.id)
            await self.fail(record.id, f"the result could not be written as {params['image_format']}: {exc}")
            return True
        try:
            await asyncio.to_thread(self.store.complete, record.id, data, params["image_format"], outcome.engine_s)
            self.watchers.notify(record.id)
        except Exception:  # a full or failing disk: the detail (and its paths) is for the log
            log.exception("job %s: the result could not be stored", record.id)
            await self.fail(record.id, "the result could not be stored; the server log says why")
        return True

    def _mark_started(self, job_id: str) -> bool:
        """On the worker thread, just before the engine runs: QUEUED -> PROCESSING, unless another replica or a
        cancel came first."""
        started = self.store.mark_started(job_id)
        self.watchers.notify(job_id)
        return started

    def _load_job(self, record: JobRecord) -> tuple[SwapJob, dict[str, str]]:
        """The job, and the sha256 of each input (what the output's record names them by)."""
        images = decode_inputs(self.store.load_inputs(record.id), self.settings.max_image_pixels)
        return build_job(record.params, images), input_digests(images)

    async def deliver_webhook(self, record: JobRecord) -> bool:
        """POST the status body to the job's webhook, signed, retried with backoff; never blocks a worker."""
        body = json.dumps(status_body(record), separators=(",", ":")).encode()
        signature = hmac.new(record.params["_webhook_secret"].encode(), body, hashlib.sha256).hexdigest()
        headers = {
            "content-type": "application/json",
            "x-segswap-signature": f"sha256={signature}",
            "x-segswap-request-id": record.id,
        }
        for attempt, delay in enumerate((0, *WEBHOOK_DELAYS_S)):
            await asyncio.sleep(delay * self.settings.webhook_backoff_scale)
            try:
                status = await post_pinned(
                    record.webhook_url, "webhook_url", body, headers, timeout_s=10.0, allow=self.settings.fetch_allow
                )
            except Exception as exc:  # refused, timed out, unreachable: all retried like a 5xx
                log.warning("webhook for job %s, attempt %d: %s", record.id, attempt + 1, _describe(exc))
                continue
            if 200 <= status < 300:
                return True
            log.warning("webhook for job %s, attempt %d: HTTP %d", record.id, attempt + 1, status)
        return False


class JobProgress:
    """A running job's last (step, total), and its last step's preview, rendered only when asked for; `on_report`
    is called after each step (on the worker thread)."""

    def __init__(self, on_report: Callable[[], None] = lambda: None) -> None:
        self.step: tuple[int, int] | None = None
        self._make: Callable[[], Image.Image] | None = None
        self._on_report = on_report

    def __call__(self, done: int, total: int) -> None:
        self.step = (done, total)
        self._on_report()

    def preview(self, make: Callable[[], Image.Image]) -> None:
        self._make = make

    def render_preview(self) -> Image.Image | None:
        make = self._make
        return make() if make is not None else None


def status_body(record: JobRecord) -> dict:
    body = {"request_id": record.id, "status": record.status, "metrics": record.metrics}
    if record.error:
        body["error"] = record.error
    return body


def media_type(record: JobRecord) -> str:
    return MEDIA_TYPES[record.params["image_format"]]


def _describe(exc: Exception) -> str:
    return exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
