"""The workers' engines: which engine each set and device gets, loading and warming it, readiness when all are warm."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from functools import partial

from PIL import Image, ImageDraw

from pipelines import Engine, EngineUnavailable, SegswapError, SwapJob, WeightsError, load_engine
from pipelines.job import ERASE
from pipelines.models.model_sets import COMPOSITE
from server.serving.lifecycle import Lifecycle
from server.serving.served_sets import ServedSets
from server.settings import Settings

log = logging.getLogger("segswap")

# One load at a time in a process: accelerate's low-memory loading patches torch globally while a model loads
# (parameters made on the meta device), so two sets loading at once on two threads break each other.
LOADING = threading.Lock()
EngineFactory = Callable[[str], Engine]
"""Builds the engine of one worker, given its device ("cpu", "cuda:1", ...)."""


def same_engine(engine: Engine) -> EngineFactory:
    def factory(device: str) -> Engine:
        return engine

    return factory


def load_configured_engine(settings: Settings, device: str | None = None, model_set: str | None = None) -> Engine:
    """The engine of the set `model_set` (default: the first the settings name), on `device`; logs which and why.

    One set named alone keeps `engine`'s meaning (auto: composite when the set is missing); among several, each
    loads as named or the server does not start (a set asked for never silently becomes another)."""
    names = settings.model_set_names
    name = model_set or (names[0] if names else None)
    kind = "composite" if name == COMPOSITE else "diffusion" if len(names) > 1 else settings.engine
    choice = load_engine(
        kind,
        settings.weights_dir,
        model_set=None if name == COMPOSITE else name,
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


def start_sets(sets: ServedSets, lifecycle: Lifecycle, factories: dict[str, EngineFactory], devices: list[str]) -> None:
    """One worker per device for each set, each loading and warming up its engine; ready when all are."""
    names = [f"{device}-{i}" if devices.count(device) > 1 else device for i, device in enumerate(devices)]
    waiting = {(served.name, name) for served in sets for name in names}
    lock = threading.Lock()

    def prepare(factory: EngineFactory, device: str) -> Engine:
        with LOADING:
            engine = factory(device)
        warm_up(engine)
        return engine

    def ready(set_name: str, name: str, engine: Engine) -> None:
        with lock:
            waiting.discard((set_name, name))
            if not any(waiting_set == set_name for waiting_set, _ in waiting):
                sets.warm(set_name, engine)
            lifecycle.engine_name = sets.default.engine_name or lifecycle.engine_name
            if not waiting and not lifecycle.failure:
                lifecycle.ready = True
                log.info("ready: %s, %d worker(s) each on %s", ", ".join(sets.names), len(devices), ", ".join(devices))

    def failed(exc: Exception) -> None:
        detail = str(exc) if isinstance(exc, SegswapError | OSError | RuntimeError) else repr(exc)
        log.error("engine failed to load: %s", detail)
        lifecycle.failure_detail = " ".join(detail.split())  # one line, for `segswap serve`'s exit
        lifecycle.failure = public_reason(exc)

    for served in sets:
        factory = factories[served.name]
        for device, name in zip(devices, names, strict=True):
            served.work.start_worker(
                partial(prepare, factory, device), f"{served.name}-{name}", partial(ready, served.name, name), failed
            )


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
