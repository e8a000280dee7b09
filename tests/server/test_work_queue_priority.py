"""Interactive work before batch work, first in first out within each class, with a bound against starvation
(server/serving/priority.py), in the order alone and in a work queue served by a gated engine."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from pipelines import SwapJob
from server.serving.priority import BATCH, INTERACTIVE, STOP, TicketOrder
from server.serving.work_queue import WorkQueue
from tests.server.engines import GatedEngine

CLOCK = itertools.count(1)


@dataclass(eq=False)
class Waiting:
    name: str
    priority: str
    since: float = field(default_factory=lambda: float(next(CLOCK)))
    state: str = "queued"


def order_of(tickets: list[Waiting], batch_every: int = 4) -> list[str]:
    order = TicketOrder(batch_every)
    for ticket in tickets:
        order.put(ticket)
    order.stop_one()
    names = []
    while (ticket := order.next()) is not STOP:
        names.append(ticket.name)
    return names


def batch(*names: str) -> list[Waiting]:
    return [Waiting(name, BATCH) for name in names]


def interactive(*names: str) -> list[Waiting]:
    return [Waiting(name, INTERACTIVE) for name in names]


def test_interactive_tickets_start_before_batch_ones_in_arrival_order_within_each_class():
    tickets = [*batch("b1", "b2"), *interactive("i1"), *batch("b3"), *interactive("i2")]
    assert order_of(tickets) == ["i1", "i2", "b1", "b2", "b3"]


def test_after_batch_every_interactive_starts_in_a_row_the_oldest_batch_ticket_starts():
    tickets = [*batch("b1", "b2"), *interactive(*(f"i{n}" for n in range(1, 11)))]
    assert order_of(tickets, batch_every=4) == [
        *("i1", "i2", "i3", "i4", "b1"),
        *("i5", "i6", "i7", "i8", "b2"),
        *("i9", "i10"),
    ]
    assert order_of(tickets, batch_every=1)[:6] == ["i1", "b1", "i2", "b2", "i3", "i4"]


def test_within_a_class_the_work_asked_for_first_starts_first_whatever_order_it_was_queued_in():
    """The dispatcher loads v2 jobs side by side: the one submitted first may reach the queue second."""
    late, early = Waiting("b2", BATCH, since=2.0), Waiting("b1", BATCH, since=1.0)
    assert order_of([late, early, Waiting("i1", INTERACTIVE, since=3.0)]) == ["i1", "b1", "b2"]


def test_cancelled_tickets_are_passed_over_and_a_stop_waits_for_the_tickets_still_queued():
    tickets = [*batch("b1", "b2"), *interactive("i1")]
    tickets[0].state = "dropped"
    order = TicketOrder()
    order.stop_one()
    for ticket in tickets:
        order.put(ticket)
    assert [order.next().name, order.next().name, order.next()] == ["i1", "b2", STOP]


def test_a_batch_ticket_taken_ahead_yields_to_an_interactive_one_that_came_meanwhile():
    order = TicketOrder()
    (first,) = batch("b1")
    order.put(first)
    assert order.take_ahead() is first  # nothing interactive waits: the batch ticket is next, prepared early
    order.put(Waiting("i1", INTERACTIVE))
    assert order.next(first).name == "i1"
    assert order.next() is first


def test_taking_a_batch_ticket_ahead_again_and_again_never_resets_the_bound():
    """The worst case for a staged worker: each interactive ticket comes just after the batch ticket was taken
    ahead. The batch ticket still starts after batch_every interactive ones."""
    order = TicketOrder(batch_every=3)
    order.put(Waiting("b1", BATCH))
    started = []
    for n in range(1, 8):
        ahead = order.take_ahead()
        order.put(Waiting(f"i{n}", INTERACTIVE))
        started.append(order.next(ahead).name)
    assert started[:4] == ["i1", "i2", "i3", "b1"]


def job(seed: int) -> SwapJob:
    return SwapJob(Image.new("RGB", (8, 8)), Image.new("L", (8, 8), 255), Image.new("RGB", (4, 4)), seed=seed)


def serve_in_order(tickets: list[tuple[int, str]], batch_every: int = 4) -> list[int]:
    """Queue each (seed, priority) before one worker starts on a gated engine; the seeds in the order they ran."""
    engine = GatedEngine()
    work = WorkQueue(len(tickets), batch_every=batch_every)

    async def scenario():
        queued = [work.submit(job(seed), time.monotonic() + 60, priority=priority) for seed, priority in tickets]
        assert (work.depth_of(INTERACTIVE), work.depth_of(BATCH)) == (
            sum(p == INTERACTIVE for _, p in tickets),
            sum(p == BATCH for _, p in tickets),
        )
        work.start_worker(lambda: engine, "cpu", lambda engine: None, lambda exc: None)
        await asyncio.gather(*(ticket.future for ticket in queued))

    try:
        asyncio.run(scenario())
    finally:
        work.stop(timeout=10)
    assert work.depth == work.depth_of(INTERACTIVE) == work.depth_of(BATCH) == 0
    return engine.ran


def test_a_worker_runs_an_interactive_job_before_the_batch_jobs_queued_earlier():
    assert serve_in_order([(1, BATCH), (2, BATCH), (3, BATCH), (10, INTERACTIVE)]) == [10, 1, 2, 3]


def test_under_a_stream_of_interactive_jobs_a_batch_job_waits_at_most_batch_every_starts():
    stream = [(1, BATCH), *((10 + n, INTERACTIVE) for n in range(9))]
    ran = serve_in_order(stream, batch_every=4)
    assert ran.index(1) == 4 and ran[:4] == [10, 11, 12, 13]


class StagedGate:
    """An engine in stages whose first `generate` waits for `gate`; records what each stage ran, by seed."""

    name = "staged-gate"

    def __init__(self) -> None:
        self.gate, self.generating = threading.Event(), threading.Event()
        self.prepared: list[int] = []
        self.generated: list[int] = []

    def prepare(self, job: SwapJob) -> int:
        self.prepared.append(job.seed)
        return job.seed

    def generate(self, job: SwapJob, prepared: int, progress=None) -> Image.Image:
        assert prepared == job.seed, "another job's preparation"
        self.generating.set()
        assert self.gate.wait(30)
        self.generated.append(job.seed)
        return Image.new("L", (4, 4), job.seed)

    def finish(self, job: SwapJob, prepared: int, generated: Image.Image) -> Image.Image:
        return generated


def test_an_interactive_job_goes_before_the_batch_job_a_staged_worker_prepared_ahead():
    engine = StagedGate()
    work = WorkQueue(8)

    async def scenario():
        deadline = time.monotonic() + 60
        first, second = (work.submit(job(seed), deadline, priority=BATCH) for seed in (11, 12))
        work.start_worker(lambda: engine, "cpu", lambda engine: None, lambda exc: None)
        while engine.prepared != [11, 12]:  # the first is generating, the second prepared ahead
            await asyncio.sleep(0.005)
        late = work.submit(job(13), deadline)
        engine.gate.set()
        return await asyncio.gather(first.future, second.future, late.future)

    try:
        outcomes = asyncio.run(scenario())
    finally:
        work.stop(timeout=10)
    assert engine.generated == [11, 13, 12]
    assert engine.prepared == [11, 12, 13, 12]  # the preparation ahead was dropped, and made again in its turn
    assert [outcome.image.getpixel((0, 0)) for outcome in outcomes] == [11, 12, 13]
