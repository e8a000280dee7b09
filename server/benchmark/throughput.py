"""The throughput row: jobs through a server worker one at a time, then in stages."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from PIL import Image

from pipelines import SwapJob
from server.benchmark.timing import Probe, ratio, sig


def throughput_row(engine, job: SwapJob, count: int, probe: Probe) -> dict:
    """`count` jobs (the same scene, other seeds) through a server worker twice: one at a time (the engine's
    swap), then in stages, the worker preparing the next job and finishing the last on helper threads while the
    model runs. Both run on a worker thread, as in the server (on a CPU, torch called from a second thread
    alongside the first's thread pool is much slower, whichever way the jobs go)."""
    jobs = [dataclasses.replace(job, seed=job.seed + index) for index in range(count)]
    one_at_a_time = probe.time(lambda: _through_a_worker(OneAtATime(engine), jobs))[0]
    in_stages = probe.time(lambda: _through_a_worker(engine, jobs))[0]
    return {
        "jobs": count,
        "one_at_a_time_s_per_image": sig(one_at_a_time / count),
        "in_stages_s_per_image": sig(in_stages / count),
        "speedup": ratio(one_at_a_time, in_stages),
    }


class OneAtATime:
    """An engine with only its swap: a worker runs its jobs one after another."""

    def __init__(self, engine):
        self.engine, self.name = engine, engine.name

    def swap(self, job: SwapJob, progress=None) -> Image.Image:
        return self.engine.swap(job, progress)


def _through_a_worker(engine, jobs: list[SwapJob]) -> list:
    from server.serving.work_queue import WorkQueue

    work = WorkQueue(len(jobs))

    async def served() -> list:
        tickets = [work.submit(one, time.monotonic() + 3600) for one in jobs]
        work.start_worker(lambda: engine, "bench", lambda engine: None, lambda exc: None)
        return await asyncio.gather(*(ticket.future for ticket in tickets))

    try:
        return asyncio.run(served())
    finally:
        work.stop(timeout=60)
