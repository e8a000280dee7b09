"""Which waiting ticket a worker starts next: interactive work before batch work, with a bound against starvation.

Two classes. `interactive`: someone is waiting for the answer (v1, the OpenAI route, the playground, a v2 job that
asks for it). `batch`: v2's default. A worker starts the oldest interactive ticket, oldest first within each class
(by `since`, when the work was asked for: a v2 job's submission, not when the dispatcher queued it, so jobs loaded
side by side keep their order), except that once `batch_every` interactive tickets in a row have started while
batch work waited, the next start is the oldest batch ticket: under any stream of interactive work, batch work gets
at least one start in every `batch_every + 1` (SEGSWAP_BATCH_EVERY, 4 by default).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Literal, Protocol

Priority = Literal["interactive", "batch"]
INTERACTIVE: Priority = "interactive"
BATCH: Priority = "batch"
PRIORITIES: tuple[Priority, ...] = (INTERACTIVE, BATCH)
BATCH_EVERY = 4
STOP = object()  # what `next` gives a worker told to stop, once nothing is left waiting


class Waiting(Protocol):
    priority: Priority
    since: float  # when the work was asked for (time.time()): the order within a class
    state: str  # "queued" while it may still start


class TicketOrder:
    """The tickets waiting for a worker, one queue per class, taken in the order above (thread-safe).

    A staged worker takes the next ticket early to prepare it (`take_ahead`) and hands it back when its turn comes
    (`next(ahead)`), which decides again: an interactive ticket that came meanwhile still goes before a batch one
    taken ahead, within the bound. The bound counts starts only, so taking ahead never resets it.
    """

    def __init__(self, batch_every: int = BATCH_EVERY):
        self.batch_every = batch_every
        self._waiting: dict[str, list] = {priority: [] for priority in PRIORITIES}  # heaps of (since, n, ticket)
        self._arrivals = itertools.count()  # n: equal `since`, first in first out
        self._batch_ahead = 0  # batch tickets out on take_ahead: waiting still, though not in the queue
        self._passed = 0  # interactive starts in a row while batch work waited
        self._stops = 0
        self._changed = threading.Condition()

    def put(self, ticket: Waiting) -> None:
        with self._changed:
            self._push(ticket)
            self._changed.notify()

    def stop_one(self) -> None:
        """One worker's `next` gives STOP, once no ticket is left waiting."""
        with self._changed:
            self._stops += 1
            self._changed.notify()

    def drain(self) -> list[Waiting]:
        """Every ticket still waiting, out of the queue (its workers have stopped)."""
        with self._changed:
            tickets = [entry[-1] for priority in PRIORITIES for entry in self._waiting[priority]]
            self._waiting = {priority: [] for priority in PRIORITIES}
            return tickets

    def take_ahead(self) -> Waiting | None:
        """The ticket that would start next, out of the queue (None if none waits); give it back to `next`."""
        with self._changed:
            ticket = self._pick()
            if ticket is not None and ticket.priority == BATCH:
                self._batch_ahead += 1
            return ticket

    def next(self, ahead: Waiting | None = None) -> Waiting | object:
        """The ticket to start now, waiting for one if none waits; STOP for a worker told to stop. `ahead` (from
        `take_ahead`) goes back among the waiting first, so it starts now only if it is still next."""
        with self._changed:
            if ahead is not None:
                self._push(ahead)
                self._batch_ahead -= ahead.priority == BATCH
            while (ticket := self._pick()) is None:
                if self._stops:
                    self._stops -= 1
                    return STOP
                self._changed.wait()
            self._count_start(ticket)
            return ticket

    def _pick(self) -> Waiting | None:
        """Pop the ticket that goes next: the oldest batch one when none interactive waits or the bound is due."""
        interactive, batch = (_live(self._waiting[priority]) for priority in PRIORITIES)
        if batch and (not interactive or self._passed >= self.batch_every):
            return heapq.heappop(batch)[-1]
        return heapq.heappop(interactive)[-1] if interactive else None

    def _push(self, ticket: Waiting) -> None:
        heapq.heappush(self._waiting[ticket.priority], (ticket.since, next(self._arrivals), ticket))

    def _count_start(self, ticket: Waiting) -> None:
        if ticket.priority == INTERACTIVE and (_live(self._waiting[BATCH]) or self._batch_ahead):
            self._passed += 1
        else:
            self._passed = 0


def _live(waiting: list) -> list:
    """The heap `waiting` without the cancelled tickets at its top (their slots were freed when they were cancelled)."""
    while waiting and waiting[0][-1].state != "queued":
        heapq.heappop(waiting)
    return waiting
