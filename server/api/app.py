"""Building the FastAPI app: settings, workers, routes, error handlers, access log and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from pipelines import Engine
from server import __version__
from server.access.credits import open_ledger
from server.access.keys import KeyFile
from server.access.ratelimit import RateLimiter
from server.api.access_log import AccessMiddleware
from server.api.docs import mount_docs
from server.api.errors import install_error_handlers
from server.api.health import router as router_health
from server.api.masks import router as router_masks
from server.api.models import router as router_models
from server.api.openai_images import router as router_openai
from server.api.playground import mount_playground
from server.api.v1 import router as router_v1
from server.api.v2 import router as router_v2
from server.inputs.provenance import provenance_for
from server.jobs.dispatcher import JobRunner
from server.jobs.store import open_job_store
from server.serving.heap import IdleTrimmer
from server.serving.lifecycle import Lifecycle
from server.serving.memory_check import check_memory
from server.serving.metrics import Metrics
from server.serving.selection import SelectionService
from server.serving.served_sets import ServedSets, served_set_names
from server.serving.set_loading import SetLoader
from server.serving.work_queue import Outcome, WorkQueue
from server.serving.workers import EngineFactory, load_configured_engine, same_engine, start_sets, visible_devices
from server.settings import Settings


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, engine_factory: EngineFactory | None = None
) -> FastAPI:
    """The app. `engine` (one worker) or `engine_factory` (one per device) override the configured engine (one
    set); otherwise each configured set must fit its devices' memory (DoesNotFit) before anything loads."""
    settings = settings or Settings()
    provenance_for(settings)  # a certificate that cannot sign stops the start, not the first request
    if engine is not None:
        engine_factory = same_engine(engine)
    names, named = served_set_names(settings)
    devices = settings.devices or visible_devices()
    metrics = Metrics()
    sets = ServedSets(names, partial(_set_queue, settings, metrics))
    work = sets.default.work  # the default set's queue: the single-set server's one queue

    def factory_for(name: str) -> EngineFactory:
        return engine_factory or partial(_set_engine, settings, name if named or name not in names else None)

    loader = SetLoader(sets, settings, devices, factory_for, metrics)
    initial = loader.initial()
    if engine_factory is None:
        check_memory(settings, initial, devices)
    lifecycle = Lifecycle()
    heap = IdleTrimmer(busy=lambda: bool(sets.depth or sets.in_flight))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        factories = {name: factory_for(name) for name in initial}
        starting = asyncio.create_task(asyncio.to_thread(start_sets, sets, lifecycle, factories, devices))
        jobs = JobRunner(open_job_store(settings), sets, lifecycle, settings, metrics, app.state.credits)
        app.state.jobs = jobs
        background = [asyncio.create_task(jobs.run()), asyncio.create_task(jobs.purge_forever())]
        background.append(asyncio.create_task(heap.run()))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await starting
            await asyncio.to_thread(sets.stop)
            await asyncio.to_thread(jobs.store.close)

    app = FastAPI(
        title="segswap",
        version=__version__,
        description="Self-hosted SegSwap v0.1: swap an object or pattern into the masked region of a photo.",
        lifespan=lifespan,
        docs_url=None,  # served from the package by server/api/docs.py
        redoc_url=None,
    )
    app.state.settings, app.state.work, app.state.lifecycle, app.state.metrics = settings, work, lifecycle, metrics
    app.state.sets, app.state.loader, app.state.heap = sets, loader, heap
    app.state.key_file = KeyFile(settings.keys_file) if settings.keys_file else None
    if app.state.key_file is not None:
        app.state.key_file.records()  # a key file that cannot be read stops the start (KeyFileError), in one line
    app.state.credits = open_ledger(settings) if settings.keys_file else None
    app.state.limiter = RateLimiter()
    app.state.selection = SelectionService(settings)
    metrics.watch_queue(lambda: sets.depth, lambda: sets.in_flight, sets.depth_of)
    metrics.watch_sets(lambda: [(each.name, each.work.depth, each.work.in_flight, each.loaded) for each in sets])
    install_error_handlers(app)
    app.include_router(router_v1)
    app.include_router(router_masks)
    app.include_router(router_openai)
    app.include_router(router_models)
    app.include_router(router_health)
    app.include_router(router_v2)
    mount_playground(app)
    mount_docs(app)
    app.add_middleware(AccessMiddleware, metrics=metrics, heap=heap)
    return app


def _set_queue(settings: Settings, metrics: Metrics, name: str) -> WorkQueue:
    """One set's queue, its images timed under its name."""

    def observe(outcome: Outcome) -> None:
        metrics.model_set_seconds.labels(name).observe(outcome.queue_s + outcome.engine_s)

    idle = metrics.worker_idle_seconds.observe
    return WorkQueue(
        settings.max_queue,
        on_drop=metrics.dropped.inc,
        on_idle_gap=idle,
        on_image=observe,
        batch_every=settings.batch_every,
    )


def _set_engine(settings: Settings, name: str | None, device: str) -> Engine:
    """A set's engine on `device`: the set named (exactly that one when the settings did not name it: loaded at
    runtime), or (None) what the settings' engine picks."""
    exact = name is not None and name not in settings.model_set_names
    return load_configured_engine(settings, device, name, exact=exact)
