"""Whether a request may come in now: refused while loading or draining, when its set is not served, and when its
queue is full."""

from __future__ import annotations

import time

from server.errors import TooManyRequests, Unavailable
from server.serving.lifecycle import Lifecycle
from server.serving.served_sets import ServedSet, ServedSets
from server.serving.work_queue import QueueFull


def refuse_if_unavailable(lifecycle: Lifecycle, sets: ServedSets | None = None) -> None:
    """Unavailable while loading or draining; with `sets`, a single-set server's full queue is a 429 before any
    input is fetched (a set not loaded now has no queue to be full: picking it says why, or loads it on demand)."""
    reason = lifecycle.not_ready_reason()
    if reason:
        raise Unavailable(reason, {"Retry-After": "5"})
    if sets is None or len(sets.names) != 1 or not sets.default.loaded:
        return
    try:
        sets.default.work.check_capacity()
    except QueueFull as full:
        raise queue_full_error(full) from None


async def admit_to_set(sets: ServedSets, name: str | None) -> ServedSet:
    """The set a request names (the default if none; a 400 listing those served if not served), refused with
    429 when its queue is full: before any input is fetched."""
    served = await sets.pick_async(name)
    try:
        served.work.check_capacity()
    except QueueFull as full:
        raise queue_full_error(full) from None
    return served


def refuse_if_draining(lifecycle: Lifecycle) -> None:
    """For work that needs no engine (selection): refused only while the server shuts down."""
    if lifecycle.draining:
        raise Unavailable("the server is shutting down", {"Retry-After": "5"})


def queue_full_error(full: QueueFull) -> TooManyRequests:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + full.retry_after_s))
    headers = {"Retry-After": str(full.retry_after_s), "x-rate-limit-reset-at-utc": reset}
    return TooManyRequests(f"the server is busy (queue full); retry in {full.retry_after_s} s", headers)
