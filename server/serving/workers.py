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


def load_configured_engine(
    settings: Settings, device: str | None = None, model_set: str | None = None, exact: bool = False
) -> Engine:
    """The engine of the set `model_set` (default: the first the settings name), on `device`; logs which and why.

    One set named alone keeps `engine`'s meaning (auto: composite when the set is missing); among several, or
    `exact` (a set loaded at runtime), each loads as named or fails (a set asked for never silently becomes
    another)."""
    names = settings.model_set_names
    name = model_set or (names[0] if names else None)
    kind = "composite" if name == COMPOSITE else "diffusion" if len(names) > 1 or exact else settings.engine
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
    """At start: one worker per device for each of `factories`' sets, each loading and warming up its engine;
    ready when all are. A set that fails to load stops the server (lifecycle.failure)."""
    waiting = set(factories)
    lock = threading.Lock()

    def ready(set_name: str, engine: Engine) -> None:
        with lock:
            waiting.discard(set_name)
            lifecycle.engine_name = sets.default.engine_name or lifecycle.engine_name
            if not waiting and not lifecycle.failure:
                lifecycle.ready = True
                loaded = ", ".join(served.name for served in sets if served.loaded)
                log.info("ready: %s, %d worker(s) each on %s", loaded, len(devices), ", ".join(devices))

    def failed(set_name: str, exc: Exception) -> None:
        detail = str(exc) if isinstance(exc, SegswapError | OSError | RuntimeError) else repr(exc)
        log.error("engine failed to load: %s", detail)
        lifecycle.failure_detail = " ".join(detail.split())  # one line, for `segswap serve`'s exit
        lifecycle.failure = public_reason(exc)

    for name, factory in factories.items():
        start_set(sets, name, factory, devices, partial(ready, name), partial(failed, name))


def start_set(
    sets: ServedSets,
    set_name: str,
    factory: EngineFactory,
    devices: list[str],
    on_ready: Callable[[Engine], None],
    on_failure: Callable[[Exception], None],
) -> None:
    """One worker per device for the set, each loading and warming up its engine; when all are warm the set
    is loaded (sets.warm) and `on_ready` hears of it; the first failure goes to `on_failure`."""
    names = [f"{device}-{i}" if devices.count(device) > 1 else device for i, device in enumerate(devices)]
    waiting, lock = set(names), threading.Lock()

    def prepare(device: str) -> Engine:
        with LOADING:
            engine = factory(device)
        warm_up(engine)
        return engine

    def ready(name: str, engine: Engine) -> None:
        with lock:
            waiting.discard(name)
            if waiting:
                return
            sets.warm(set_name, engine)
        on_ready(engine)

    served = sets.get(set_name)
    for device, name in zip(devices, names, strict=True):
        served.work.start_worker(partial(prepare, device), f"{set_name}-{name}", partial(ready, name), on_failure)


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
