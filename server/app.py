"""Building the FastAPI app: settings, workers, routes, error handlers, access log and metrics."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from PIL import Image, ImageDraw

from pipelines import Engine, SegswapError, SwapJob, load_engine

from . import __version__
from .access import AccessMiddleware
from .credits import open_ledger
from .errors import install_error_handlers
from .jobs import JobRunner
from .jobstore import open_job_store
from .keys import KeyFile
from .lifecycle import Lifecycle
from .metrics import Metrics
from .playground import mount_playground
from .queue import WorkQueue
from .ratelimit import RateLimiter
from .routes import router
from .routes_v2 import router as router_v2
from .settings import Settings

log = logging.getLogger("segswap")

EngineFactory = Callable[[str], Engine]
"""Builds the engine of one worker, given its device ("cpu", "cuda:1", ...)."""


def create_app(settings: Settings | None = None, engine: Engine | None = None, engine_factory: EngineFactory | None = None) -> FastAPI:
    """The app. `engine` (one worker) or `engine_factory` (one per device) override the configured engine."""
    settings = settings or Settings()
    if engine is not None:
        engine_factory = _same_engine(engine)
    factory = engine_factory or (lambda device: load_configured_engine(settings, device))
    metrics = Metrics()
    work = WorkQueue(settings.max_queue, on_event=_queue_events(metrics), on_idle_gap=metrics.worker_idle_seconds.observe)
    lifecycle = Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        devices = settings.devices or visible_devices()
        starting = asyncio.create_task(asyncio.to_thread(start_workers, work, lifecycle, factory, devices))
        jobs = JobRunner(open_job_store(settings), work, lifecycle, settings, metrics)
        app.state.jobs = jobs
        background = [asyncio.create_task(jobs.run()), asyncio.create_task(jobs.purge_forever())]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await starting
            await asyncio.to_thread(work.stop)
            await asyncio.to_thread(jobs.store.close)

    app = FastAPI(
        title="segswap",
        version=__version__,
        description="Self-hosted SegSwap v0.1: swap an object or pattern into the masked region of a photo.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.work, app.state.lifecycle, app.state.metrics = settings, work, lifecycle, metrics
    app.state.key_file = KeyFile(settings.keys_file) if settings.keys_file else None
    app.state.credits = open_ledger(settings) if settings.keys_file else None
    app.state.limiter = RateLimiter()
    metrics.watch_queue(lambda: work.depth, lambda: work.in_flight)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(router_v2)
    mount_playground(app)
    app.add_middleware(AccessMiddleware, metrics=metrics)
    return app


def _same_engine(engine: Engine) -> EngineFactory:
    def factory(device: str) -> Engine:
        return engine

    return factory


def load_configured_engine(settings: Settings, device: str | None = None) -> Engine:
    """The engine the settings ask for, on `device`; logs which one and why."""
    choice = load_engine(
        settings.engine, settings.weights_dir, arch=settings.model_set, variant=settings.ip_adapter,
        options=settings.diffusion_options(device),
    )
    log.info("engine: %s on %s (%s)", choice.engine.name, device or settings.device, choice.reason)
    return choice.engine


def visible_devices() -> list[str]:
    """Every visible GPU, one worker each; with none, one CPU worker."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


def start_workers(work: WorkQueue, lifecycle: Lifecycle, factory: EngineFactory, devices: list[str]) -> None:
    """One worker per device, each loading and warming up its engine; ready when all are."""
    names = [f"{device}-{i}" if devices.count(device) > 1 else device for i, device in enumerate(devices)]
    waiting = set(names)
    lock = threading.Lock()

    def prepare(device: str) -> Engine:
        engine = factory(device)
        warm_up(engine)
        return engine

    def ready(name: str, engine: Engine) -> None:
        with lock:
            waiting.discard(name)
            lifecycle.engine_name = engine.name
            if not waiting and not lifecycle.failure:
                lifecycle.ready = True
                log.info("ready: %d worker(s) on %s", len(devices), ", ".join(devices))

    def failed(exc: Exception) -> None:
        lifecycle.failure = str(exc) if isinstance(exc, SegswapError | OSError | RuntimeError) else repr(exc)
        log.error("engine failed to load: %s", lifecycle.failure)

    for device, name in zip(devices, names, strict=True):
        work.start_worker(partial(prepare, device), name, partial(ready, name), failed)


def warm_up(engine: Engine) -> None:
    """One small swap before readiness, so the first client does not pay for lazy initialisation."""
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    engine.swap(SwapJob(Image.new("RGB", (64, 64), (128, 128, 128)), mask, Image.new("RGB", (16, 16)), steps=2, seed=0))


def _queue_events(metrics: Metrics) -> Callable:
    def on_event(kind: str, ticket) -> None:
        if kind == "dropped":
            metrics.dropped.inc()

    return on_event
