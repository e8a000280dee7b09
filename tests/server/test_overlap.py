"""A worker keeps its device busy: with jobs waiting, the next is prepared and the last finished on helper
threads while the model runs (server/serving/work_queue.py), on the tiny diffusion sets."""

import asyncio
import threading
import time

import pytest

pytest.importorskip("diffusers")

from pipelines.engines.diffusion.engine import DiffusionEngine  # noqa: E402
from pipelines.models.model_sets import ModelSet  # noqa: E402
from server.serving.priority import BATCH, INTERACTIVE  # noqa: E402
from server.serving.work_queue import Dropped, WorkQueue  # noqa: E402
from tests.pipelines.jobs import diffusion_job  # noqa: E402

SEEDS = (11, 12, 13)


class Stages:
    """Wraps an engine's stages to record (stage, seed, start, end) as they run, on whichever thread."""

    def __init__(self, engine):
        self.engine, self.events, self.lock = engine, [], threading.Lock()
        for stage in ("prepare", "generate", "finish"):
            setattr(engine, stage, self._timed(stage, getattr(engine, stage)))

    def _timed(self, stage, run):
        def timed(job, *args, **kwargs):
            start = time.monotonic()
            try:
                return run(job, *args, **kwargs)
            finally:
                with self.lock:
                    self.events.append((stage, job.seed, start, time.monotonic()))

        return timed

    def span(self, stage: str, seed: int) -> tuple[float, float]:
        return next((start, end) for name, s, start, end in self.events if (name, s) == (stage, seed))


def serve(engine, jobs, during=None, priority=INTERACTIVE) -> list:
    """Queue every job first (of class `priority`), then start one worker on `engine`; the outcomes (or errors),
    in order. `during(work, tickets)`, a coroutine, runs while they are served (and may add tickets)."""
    work = WorkQueue(8)

    async def scenario():
        tickets = [work.submit(job, time.monotonic() + 120, priority=priority) for job in jobs]
        work.start_worker(lambda: engine, "cpu", lambda engine: None, lambda exc: None)
        if during is not None:
            await during(work, tickets)
        return await asyncio.gather(*(ticket.future for ticket in tickets), return_exceptions=True)

    try:
        return asyncio.run(scenario())
    finally:
        work.stop(timeout=30)


@pytest.fixture()
def engine(tiny_weights):
    return DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15"))


def test_the_next_job_is_prepared_and_the_last_finished_while_the_model_runs(engine, tiny_weights):
    jobs = [diffusion_job(seed=seed, steps=6) for seed in SEEDS]
    stages = Stages(engine)
    outcomes = serve(engine, jobs)
    first_model, second_model = stages.span("generate", 11), stages.span("generate", 12)
    assert stages.span("prepare", 12)[0] < first_model[1], "job 2 was prepared only after job 1's model ended"
    assert stages.span("finish", 11)[0] < second_model[1], "job 1 was finished only after job 2's model ended"
    # one model call at a time, in arrival order
    models = sorted(stages.span("generate", seed) for seed in SEEDS)
    assert all(a[1] <= b[0] for a, b in zip(models, models[1:], strict=False))
    alone = DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15"))
    for job, outcome in zip(jobs, outcomes, strict=True):
        assert outcome.image.tobytes() == alone.swap(job).tobytes(), "not the bytes of one swap at a time"


def test_a_job_cancelled_while_prepared_ahead_never_reaches_the_model(engine):
    """Job 2 is prepared while job 1's (long) model runs, then cancelled: it is dropped, job 3 runs."""
    stages = Stages(engine)
    cancelled = []

    async def cancel_once_prepared(work, tickets):
        while not any(event[:2] == ("prepare", 12) for event in stages.events):
            await asyncio.sleep(0.005)
        cancelled.append(work.cancel(tickets[1], "cancelled by the test"))

    jobs = [diffusion_job(seed=11, steps=40), diffusion_job(seed=12, steps=4), diffusion_job(seed=13, steps=4)]
    outcomes = serve(engine, jobs, during=cancel_once_prepared)
    assert cancelled == [True] and isinstance(outcomes[1], Dropped)
    assert {seed for stage, seed, *_ in stages.events if stage == "generate"} == {11, 13}
    assert outcomes[0].image.size == outcomes[2].image.size == jobs[0].main_image.size


def test_an_interactive_job_goes_before_the_batch_job_prepared_ahead_with_the_same_bytes(engine, tiny_weights):
    """Batch job 2 is prepared while job 1's (long) model runs; interactive job 3 comes then, and runs next."""
    stages = Stages(engine)
    jobs = [diffusion_job(seed=11, steps=40), diffusion_job(seed=12, steps=4)]
    late = diffusion_job(seed=13, steps=4)

    async def interactive_once_prepared(work, tickets):
        while not any(event[:2] == ("prepare", 12) for event in stages.events):
            await asyncio.sleep(0.005)
        tickets.append(work.submit(late, time.monotonic() + 120))

    outcomes = serve(engine, jobs, during=interactive_once_prepared, priority=BATCH)
    assert [seed for stage, seed, *_ in sorted(stages.events, key=lambda e: e[2]) if stage == "generate"] == [
        11,
        13,
        12,
    ]
    alone = DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15"))
    for job, outcome in zip([*jobs, late], outcomes, strict=True):
        assert outcome.image.tobytes() == alone.swap(job).tobytes(), "not the bytes of one swap at a time"


def test_a_failing_preparation_fails_its_job_only(engine):
    from PIL import Image

    bad = diffusion_job(seed=12, mask_image=Image.new("L", (5, 7), 255))  # another aspect: a 400 before the model
    outcomes = serve(engine, [diffusion_job(seed=11, steps=4), bad, diffusion_job(seed=13, steps=4)])
    assert isinstance(outcomes[1], Exception) and "mask" in str(outcomes[1])
    assert outcomes[0].image.size == outcomes[2].image.size == bad.main_image.size
