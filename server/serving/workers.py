"""The workers' engines: which engine each device gets, loading and warming it, readiness when all are warm."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from functools import partial

from PIL import Image, ImageDraw

from pipelines import Engine, EngineUnavailable, SegswapError, SwapJob, WeightsError, load_engine
from pipelines.engines.loras import check_lora
from pipelines.job import ERASE
from server.serving.lifecycle import Lifecycle
from server.serving.work_queue import WorkQueue
from server.settings import Settings

log = logging.getLogger("segswap")

EngineFactory = Callable[[str], Engine]
"""Builds the engine of one worker, given its device ("cpu", "cuda:1", ...)."""


def same_engine(engine: Engine) -> EngineFactory:
    def factory(device: str) -> Engine:
        return engine

    return factory


def load_configured_engine(settings: Settings, device: str | None = None) -> Engine:
    """The engine the settings ask for, on `device`; logs which one and why."""
    choice = load_engine(
        settings.engine,
        settings.weights_dir,
        model_set=settings.model_set,
        variant=settings.ip_adapter,
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
            lifecycle.check_lora = partial(check_lora, engine)
            if not waiting and not lifecycle.failure:
                lifecycle.ready = True
                log.info("ready: %d worker(s) on %s", len(devices), ", ".join(devices))

    def failed(exc: Exception) -> None:
        detail = str(exc) if isinstance(exc, SegswapError | OSError | RuntimeError) else repr(exc)
        log.error("engine failed to load: %s", detail)
        lifecycle.failure_detail = " ".join(detail.split())  # one line, for `segswap serve`'s exit
        lifecycle.failure = public_reason(exc)

    for device, name in zip(devices, names, strict=True):
        work.start_worker(partial(prepare, device), name, partial(ready, name), failed)


def warm_up(engine: Engine) -> None:
    """One small swap and one small erase before readiness, so the first client does not pay for lazy
    initialisation (the erase, on a grainy scene, compiles the fill's loops: seconds the first time)."""
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    engine.swap(SwapJob(Image.new("RGB", (64, 64), (128, 128, 128)), mask, Image.new("RGB", (16, 16)), steps=2, seed=0))
    grain = Image.effect_noise((96, 96), 40).convert("RGB")
    hole = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(hole).ellipse((24, 24, 71, 71), fill=255)
    engine.swap(SwapJob(grain, hole, mode=ERASE, steps=2, seed=0))


def public_reason(exc: Exception) -> str:
    """Why the engine is down, in words a caller can act on: no paths, no library messages (those are logged)."""
    if isinstance(exc, WeightsError):
        return "the model weights could not be loaded (a file is missing or corrupt); the server log names it"
    if isinstance(exc, EngineUnavailable):
        return "the engine cannot run on this server (a library or device is missing); the server log says which"
    return "the engine could not be started; the server log says why"
