"""A v2 job's Server-Sent Events: pushed when the job changes, sampled, and a slow poll for other replicas' jobs.

A stream sleeps until the dispatcher or the worker running the job says it changed (server/jobs/watchers.py), so
a thousand streams on queued jobs cost nothing. Events are sampled, not a log: a stream sends what the job is at
when it wakes, at most every EVENTS_MIN_GAP_S, so steps reported faster than that are skipped (the last one is
always sent, before the end). With a shared store (PostgreSQL) another replica may run the job, and its changes
are not notified here: such a stream also reads the store every SHARED_STORE_POLL_S (and shows no steps, which
only the running replica knows).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

from fastapi import Request

from server.inputs.encode import encode_image
from server.jobs.dispatcher import JobProgress, JobRunner, status_body

EVENTS_MIN_GAP_S = 0.1
SHARED_STORE_POLL_S = 2.0
KEEP_ALIVE_S = 15.0
PREVIEW_EVERY = 3  # steps between previews
PREVIEW_SIDE = 256
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


async def event_stream(
    request: Request, jobs: JobRunner, job_id: str, output: str, previews: bool, release: Callable[[], None]
):
    """`status` on every change, `progress` {step, total} as the engine reports (with `preview` {step, image} every
    PREVIEW_EVERY steps when asked), then `completed` (with the output URL) or `failed` / `cancelled`, and the
    stream ends; a keep-alive comment when nothing happens for a while. `release` frees the key's stream slot."""
    changed = jobs.watchers.follow(job_id)
    poll_s = SHARED_STORE_POLL_S if jobs.store.shared else KEEP_ALIVE_S
    status, step, previewed, last_sent = None, None, 0, time.monotonic()
    try:
        while not await request.is_disconnected():
            changed.clear()  # before the read: a change during it wakes the wait below at once
            record = await asyncio.to_thread(jobs.store.get, job_id)
            if record is None:
                yield _event("failed", {"request_id": job_id, "error": "the job expired"})
                return
            ended = record.status in TERMINAL
            if record.status != status and not ended:
                status, last_sent = record.status, time.monotonic()
                yield _event("status", {"request_id": job_id, "status": status})
            reported = jobs.progress.get(job_id)
            progress = reported.step if reported is not None else None
            if progress is not None and progress != step and record.status != "QUEUED":
                step, last_sent = progress, time.monotonic()
                yield _event("progress", {"request_id": job_id, "step": progress[0], "total": progress[1]})
                if previews and (progress[0] - previewed >= PREVIEW_EVERY or progress[0] == progress[1]):
                    previewed = progress[0]
                    image = await asyncio.to_thread(_preview_jpeg, reported)
                    if image is not None:
                        yield _event("preview", {"request_id": job_id, "step": progress[0], "image": image})
            if ended:  # the last step first, then the end
                final = status_body(record) | ({"output": output} if record.status == "COMPLETED" else {})
                yield _event("status", {"request_id": job_id, "status": record.status})
                yield _event(record.status.lower(), final)
                return
            if time.monotonic() - last_sent >= KEEP_ALIVE_S:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            await _changed_or_timeout(changed, min(poll_s, KEEP_ALIVE_S - (time.monotonic() - last_sent)))
            await asyncio.sleep(EVENTS_MIN_GAP_S)  # a burst of steps makes one wake-up: sampled
    finally:
        jobs.watchers.unfollow(job_id, changed)
        release()


async def _changed_or_timeout(changed: asyncio.Event, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(changed.wait(), timeout=max(0.0, timeout_s))
    except TimeoutError:
        pass


def _preview_jpeg(reported: JobProgress) -> str | None:
    """The last step's preview as a data: URL (JPEG, at most PREVIEW_SIDE a side), or None if the engine makes none."""
    image = reported.render_preview()
    if image is None:
        return None
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return "data:image/jpeg;base64," + base64.b64encode(encode_image(image, "jpeg", 80)).decode("ascii")


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
