"""The bounded queue between the HTTP side and the workers that own the devices.

The event loop only enqueues tickets and awaits their futures; each worker is a thread
with its own engine (one per GPU, or one on the CPU) taking tickets oldest first within
their class: interactive ones first, batch ones (v2's default) after them, but never more than
SEGSWAP_BATCH_EVERY interactive starts in a row while batch work waits (server/serving/priority.py).
A ticket whose deadline has passed, or whose client has gone, is dropped when a worker
reaches it: the engine never runs it.

An engine in stages (prepare, generate, finish: pipelines/engines/diffusion/staged.py) keeps its device
busy: while the worker thread runs one job's model, two helper threads prepare the next job waiting (its
placement, crop, reference and schedule) and finish the last one (colour match, paste). At most one job is
prepared ahead and one finishing behind, so memory stays flat; a job prepared ahead is still started (its
deadline and cancellation checked) only when its turn comes, and only if it still goes next: an interactive job
that came meanwhile goes first, and the preparation ahead is dropped (done again when its turn comes).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field

from PIL import Image

from pipelines import Engine, ProgressFn, SegswapError, SwapJob
from server.errors import Unavailable
from server.serving.priority import BATCH_EVERY, INTERACTIVE, PRIORITIES, STOP, Priority, TicketOrder

log = logging.getLogger(__name__)

SHUTTING_DOWN = "the server is shutting down: its workers have stopped"


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Dropped(Exception):
    """The ticket was dropped before any worker ran it: `expired` (its deadline passed) or cancelled."""

    def __init__(self, reason: str, expired: bool = False):
        super().__init__(reason)
        self.expired = expired


@dataclass
class Outcome:
    image: Image.Image
    engine: str
    queue_s: float
    engine_s: float


@dataclass(eq=False)
class Ticket:
    """One queued job and the future its request awaits. State moves under `lock`:
    queued -> running -> done, or queued -> dropped."""

    job: SwapJob
    deadline: float  # time.monotonic()
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    priority: Priority = INTERACTIVE
    since: float = field(default_factory=time.time)  # when the work was asked for: its place within its class
    enqueued_at: float = field(default_factory=time.monotonic)
    state: str = "queued"
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Called on the worker thread just before the engine runs; returning False cancels the job instead.
    on_start: Callable[[], bool] | None = None
    # Called on the worker thread as the engine works: progress(done, total) denoising steps.
    on_progress: ProgressFn | None = None

    def settle(self, result: Outcome | None = None, exception: BaseException | None = None) -> None:
        """Resolve the future from any thread."""

        def settle_on_loop() -> None:
            if self.future.done():
                return
            if exception is not None:
                self.future.set_exception(exception)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle_on_loop)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


class WorkQueue:
    """A bounded queue of tickets, in priority order, served by one worker thread per engine."""

    def __init__(
        self,
        max_queue: int,
        on_drop: Callable[[], None] | None = None,
        on_idle_gap: Callable[[float], None] | None = None,
        on_image: Callable[[Outcome], None] | None = None,
        batch_every: int = BATCH_EVERY,
    ):
        self.max_queue = max_queue  # both classes together
        self._tickets = TicketOrder(batch_every)
        self._queued_by: dict[str, int] = dict.fromkeys(PRIORITIES, 0)  # tickets waiting (not dropped), by class
        self._running = 0
        self._count_lock = threading.Lock()
        self._service_times: deque[float] = deque(maxlen=20)
        self._workers: list[threading.Thread] = []
        self._stopped = False  # after stop(), nothing would run a job: refuse it instead of letting it wait
        self._stopped_because = SHUTTING_DOWN
        self._idle = threading.Condition(self._count_lock)
        self._on_drop = on_drop or (lambda: None)  # a job dropped unrun (cancelled, deadline, disconnect)
        # Seconds a worker spent between finishing a job and starting the next one that was
        # already waiting: the device's idle time between back-to-back requests.
        self._on_idle_gap = on_idle_gap or (lambda seconds: None)
        self._on_image = on_image or (lambda outcome: None)  # a job that gave its image

    # -- the event loop's side --------------------------------------------------------

    def submit(
        self,
        job: SwapJob,
        deadline: float,
        on_start: Callable[[], bool] | None = None,
        on_progress: ProgressFn | None = None,
        priority: Priority = INTERACTIVE,
        since: float | None = None,
    ) -> Ticket:
        """Enqueue `job` (asked for at `since`, time.time(); default now), or raise QueueFull (or Unavailable once
        stopped) at once."""
        loop = asyncio.get_running_loop()
        ticket = Ticket(job, deadline, loop.create_future(), loop, priority, on_start=on_start, on_progress=on_progress)
        if since is not None:
            ticket.since = since
        with self._count_lock:
            self._refuse_if_stopped()
            if self._queued >= self.max_queue:
                raise QueueFull(self._retry_after_locked())
            self._queued_by[priority] += 1
        self._tickets.put(ticket)
        return ticket

    def cancel(self, ticket: Ticket, reason: str) -> bool:
        """Drop `ticket` if no worker has started it (it frees its queue slot at once); True if dropped."""
        if not self._drop(ticket):
            return False
        ticket.settle(exception=Dropped(reason))
        self._on_drop()
        return True

    def fail_waiting(self, error: Exception) -> int:
        """Settle every ticket still queued with `error` (its queue has stopped: no worker will take it); the
        number settled."""
        failed = 0
        for ticket in self._tickets.drain():
            if self._drop(ticket):
                ticket.settle(exception=error)
                failed += 1
        return failed

    def _drop(self, ticket: Ticket) -> bool:
        """queued -> dropped, freeing its slot; False if it was not queued."""
        with ticket.lock:
            if ticket.state != "queued":
                return False
            ticket.state = "dropped"
        with self._count_lock:
            self._queued_by[ticket.priority] -= 1
            self._notify_if_idle()
        return True

    def check_capacity(self) -> None:
        """Raise QueueFull (Unavailable once stopped) if a new job could not be queued now (cheap, before any
        input is fetched)."""
        with self._count_lock:
            self._refuse_if_stopped()
            if self._queued >= self.max_queue:
                raise QueueFull(self._retry_after_locked())

    @property
    def depth(self) -> int:
        return self._queued

    def depth_of(self, priority: Priority) -> int:
        return self._queued_by[priority]

    @property
    def _queued(self) -> int:
        return sum(self._queued_by.values())

    @property
    def in_flight(self) -> int:
        return self._running

    @property
    def workers(self) -> int:
        return len(self._workers)

    def _refuse_if_stopped(self) -> None:
        if self._stopped:
            raise Unavailable(self._stopped_because, {"Retry-After": "5"})

    def close(self, reason: str) -> None:
        """Refuse new jobs with `reason` (a 503) until a worker starts: a queue whose set is not loaded."""
        with self._count_lock:
            self._stopped, self._stopped_because = True, reason

    def _retry_after_locked(self) -> int:
        """Seconds until a queue slot is likely free: the work ahead over the workers, at recent speed."""
        per_job = sum(self._service_times) / len(self._service_times) if self._service_times else 1.0
        ahead = self._queued + self._running
        return max(1, math.ceil(per_job * ahead / max(1, len(self._workers))))

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running (or `timeout` passes); True if idle."""
        end = time.monotonic() + timeout
        with self._idle:
            while self._queued or self._running:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    # -- the workers' side ------------------------------------------------------------

    def start_worker(
        self,
        prepare: Callable[[], Engine],
        name: str,
        on_ready: Callable[[Engine], None],
        on_failure: Callable[[Exception], None],
    ) -> None:
        """Start a worker thread that builds its engine with `prepare` (load, warm up), then serves.

        The engine is built on the thread that will run it: one thread per device touches the
        device and the CPU thread pools, which on a CPU avoids two OpenMP teams competing.
        """
        self._stopped = False
        args = (prepare, on_ready, on_failure)
        thread = threading.Thread(target=self._serve, args=args, name=f"segswap-worker-{name}", daemon=True)
        self._workers.append(thread)
        thread.start()

    def _serve(
        self, prepare: Callable[[], Engine], on_ready: Callable[[Engine], None], on_failure: Callable[[Exception], None]
    ) -> None:
        try:
            engine = prepare()
        except Exception as exc:
            on_failure(exc)
            return
        on_ready(engine)
        self._work(engine)

    def stop(self, timeout: float = 5.0) -> None:
        with self._count_lock:
            self._stopped, self._stopped_because = True, SHUTTING_DOWN
        for _ in self._workers:
            self._tickets.stop_one()
        for thread in self._workers:
            thread.join(timeout)
        self._workers = []

    def _work(self, engine: Engine) -> None:
        if all(callable(getattr(engine, stage, None)) for stage in ("prepare", "generate", "finish")):
            self._work_in_stages(engine)
            return
        finished = None
        while True:
            ticket = self._tickets.next()
            if ticket is STOP:
                return
            verdict = self._start(ticket)
            if verdict == "run":
                if finished is not None and ticket.enqueued_at <= finished:
                    self._on_idle_gap(time.monotonic() - finished)
                self._run(engine, ticket)
                finished = time.monotonic()
            elif verdict == "expired":
                ticket.settle(exception=Dropped("deadline passed in the queue", expired=True))
                self._on_drop()
            del ticket  # waiting for the next one must not keep this job's images alive

    def _work_in_stages(self, engine) -> None:
        """The staged loop: generate here, prepare ahead and finish behind on two helper threads."""
        helpers = ThreadPoolExecutor(2, thread_name_prefix=f"{threading.current_thread().name}-cpu")
        ahead: tuple[Ticket, Future] | None = None  # the next ticket, and its preparation
        finishing: Future | None = None
        finished: float | None = None  # when the device last ended a job
        try:
            while True:
                ticket, preparing = self._next_staged(ahead)
                if ticket is STOP:
                    return
                ahead, finishing, finished = self._run_stages(engine, helpers, ticket, preparing, finishing, finished)
                del ticket, preparing  # waiting for the next one must not keep this job's images alive
        finally:
            if finishing is not None:
                finishing.result()
            helpers.shutdown(wait=True)

    def _run_stages(self, engine, helpers, ticket: Ticket, preparing, finishing, finished):
        """One ticket through the stages; returns the next ticket prepared ahead (if any), the finish now in
        flight, and when the device ended this job."""
        verdict = self._start(ticket)
        if verdict == "expired":
            ticket.settle(exception=Dropped("deadline passed in the queue", expired=True))
            self._on_drop()
        if verdict != "run":
            _drop_preparation(preparing)
            return None, finishing, finished
        if finished is not None and ticket.enqueued_at <= finished:
            self._on_idle_gap(time.monotonic() - finished)
        started, ahead = time.monotonic(), None
        try:
            if ticket.on_start is not None and not ticket.on_start():
                raise Dropped("cancelled before it started")
            prepared = preparing.result() if preparing is not None else engine.prepare(ticket.job)
            ahead = self._prepare_ahead(engine, helpers)
            generated = engine.generate(ticket.job, prepared, progress=ticket.on_progress)
        except Exception as exc:
            self._end(ticket, started, None, self._failure(engine, exc))
            return ahead, finishing, finished
        ended = time.monotonic()
        if finishing is not None:
            finishing.result()  # one job finishing behind at most
        return ahead, helpers.submit(self._finish, engine, ticket, prepared, generated, started), ended

    def _prepare_ahead(self, engine, helpers: ThreadPoolExecutor) -> tuple[Ticket, Future] | None:
        """The next ticket waiting, with its preparation started on a helper; None if none waits."""
        ticket = self._tickets.take_ahead()
        if ticket is None:
            return None
        return ticket, helpers.submit(engine.prepare, ticket.job)

    def _next_staged(self, ahead: tuple[Ticket, Future] | None) -> tuple[object, Future | None]:
        """The ticket to start now, with its preparation if it is the one prepared ahead (else that one is dropped:
        an interactive ticket came and goes first)."""
        if ahead is None:
            return self._tickets.next(), None
        taken, preparing = ahead
        ticket = self._tickets.next(taken)
        if ticket is taken:
            return ticket, preparing
        _drop_preparation(preparing)
        return ticket, None

    def _finish(self, engine, ticket: Ticket, prepared, generated, started: float) -> None:
        outcome, error = None, None
        try:
            image = engine.finish(ticket.job, prepared, generated)
            outcome = Outcome(image, engine.name, started - ticket.enqueued_at, time.monotonic() - started)
        except Exception as exc:
            error = self._failure(engine, exc)
        self._end(ticket, started, outcome, error)

    def _failure(self, engine: Engine, exc: Exception) -> Exception:
        """`exc` for the waiting request, logged when it is not the caller's; its traceback cut (its frames hold
        the job's images in a cycle that only a full garbage collection frees)."""
        if not isinstance(exc, SegswapError | Dropped):
            log.exception("the %s engine failed on a job", engine.name)
        return exc.with_traceback(None)

    def _end(self, ticket: Ticket, started: float, outcome: Outcome | None, error: Exception | None) -> None:
        with ticket.lock:
            ticket.state = "done"
        with self._count_lock:
            self._running -= 1
            self._service_times.append(time.monotonic() - started)
            self._notify_if_idle()
        if outcome is not None:
            self._on_image(outcome)
        ticket.settle(outcome, error)

    def _start(self, ticket: Ticket) -> str:
        """queued -> running ("run"), or -> dropped past its deadline ("expired"); "cancelled" if already dropped."""
        with ticket.lock:
            if ticket.state != "queued":
                return "cancelled"  # its slot was freed when it was cancelled
            running = time.monotonic() <= ticket.deadline
            ticket.state = "running" if running else "dropped"
        with self._count_lock:
            self._queued_by[ticket.priority] -= 1
            self._running += running
            self._notify_if_idle()
        return "run" if running else "expired"

    def _notify_if_idle(self) -> None:
        if not self._queued and not self._running:
            self._idle.notify_all()

    def _run(self, engine: Engine, ticket: Ticket) -> None:
        started = time.monotonic()
        outcome, error = None, None
        try:
            if ticket.on_start is not None and not ticket.on_start():
                raise Dropped("cancelled before it started")
            image = engine.swap(ticket.job, progress=ticket.on_progress)
            outcome = Outcome(image, engine.name, started - ticket.enqueued_at, time.monotonic() - started)
        except Exception as exc:  # handed to the waiting request, which maps it to a status
            error = self._failure(engine, exc)
        self._end(ticket, started, outcome, error)


def _drop_preparation(preparing: Future | None) -> None:
    """Let go of a preparation not used, once it no longer runs: one preparation at a time, as the stages expect."""
    if preparing is not None and not preparing.cancel():
        wait_for_futures([preparing])
