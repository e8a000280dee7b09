"""Model sets loaded and unloaded while the server runs.

`load(name)` starts a set's workers (any set of the weights manifest installed in the weights folder, served
or not yet): it answers at once, the set is `loading` until every worker is warm. It is refused, in one
sentence, when the set does not fit next to those loaded (server/serving/memory_check.py).

`unload(name)` refuses the set's new requests (503), waits for its queued and running jobs, stops its workers,
and hands their memory back (a full collection, then CUDA's cached blocks); it returns what the devices held
before and after. v2 jobs stored for an unloaded set stay queued until it loads again.

With SEGSWAP_LAZY_LOAD=true only the default set loads at start; a request naming another starts its load and
waits in its queue. Before such a load, the least recently used idle sets are unloaded until the new one fits
(SEGSWAP_MEMORY_BUDGET_BYTES, or the devices' free memory).

A set that fails to load at start stops the server (server/serving/workers.py); one that fails at runtime is
`failed`, with the reason, and the others keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from pipelines import Engine, find_model_set
from pipelines.models.memory import held_bytes, release_memory
from pipelines.models.model_sets import COMPOSITE
from pipelines.models.weights import load_manifest
from server.errors import Conflict, NotFound, Unavailable
from server.serving.memory_check import DoesNotFit, check_fits
from server.serving.metrics import Metrics
from server.serving.served_sets import FAILED, LOADED, LOADING, UNLOADED, UNLOADING, ServedSet, ServedSets
from server.serving.workers import EngineFactory, public_reason, start_set
from server.settings import Settings

log = logging.getLogger("segswap")


@dataclass(frozen=True)
class Unloaded:
    name: str
    seconds: float  # waiting for its jobs, stopping its workers, handing the memory back
    held_before: dict[str, int | None]  # bytes held per device (CUDA: allocated tensors; CPU: resident size)
    held_after: dict[str, int | None]

    @property
    def freed_bytes(self) -> int | None:
        """What the devices hold less now, summed; None where it cannot be read."""
        pairs = [(self.held_before[d], self.held_after[d]) for d in self.held_before]
        if any(before is None or after is None for before, after in pairs):
            return None
        return sum(before - after for before, after in pairs)


class SetLoader:
    def __init__(
        self,
        sets: ServedSets,
        settings: Settings,
        devices: list[str],
        factory_for: Callable[[str], EngineFactory],
        metrics: Metrics,
    ):
        self.sets, self.settings, self.devices, self.metrics = sets, settings, devices, metrics
        self.factory_for = factory_for
        self.lock = threading.RLock()  # one load decision or unload at a time
        if settings.lazy_load:
            sets.load_on_demand = self._load_on_demand

    def initial(self) -> list[str]:
        """The sets loaded at start: every one named, or only the default when sets load lazily; the others
        are unloaded until asked for."""
        if not self.settings.lazy_load:
            return self.sets.names
        for served in list(self.sets)[1:]:
            served.state = UNLOADED
        return [self.sets.default.name]

    # -- loading --------------------------------------------------------------------

    def load(self, name: str, make_room: bool = False) -> ServedSet:
        """Start loading set `name` (at once if it is already loaded or loading). NotFound: no such set;
        Conflict: not installed, being unloaded, or it does not fit (`make_room`: unload idle sets first)."""
        _check_known(self.settings, name)
        with self.lock:
            served = self.sets.add(name)
            if served.state in (LOADED, LOADING):
                return served
            if served.state == UNLOADING:
                raise Conflict(f"model set {name!r} is being unloaded; load it again once it is unloaded")
            self._check_room(name, make_room)
            served.state, served.reason = LOADING, None
            factory, ready = self.factory_for(name), partial(self._ready, name)
            start_set(self.sets, name, factory, self.devices, ready, self._failed(served))
        log.info("model set %s: loading", name)
        return served

    def _load_on_demand(self, served: ServedSet) -> None:
        """A request named an unloaded set (lazy loading): load it, making room; a refusal is the request's 503."""
        try:
            self.load(served.name, make_room=True)
        except Conflict as refused:
            raise Unavailable(refused.message, {"Retry-After": "30"}) from None

    def _check_room(self, name: str, make_room: bool) -> None:
        while True:
            loaded = [served.name for served in self.sets if served.state in (LOADED, LOADING) and served.name != name]
            try:
                check_fits(self.settings, name, [n for n in loaded if n != COMPOSITE], self.devices)
                return
            except DoesNotFit as exc:
                idle = self._least_recently_used_idle(name) if make_room else None
                if idle is None:
                    raise Conflict(f"{exc}; or unload a set first (POST /v1/models/NAME/unload)") from None
                log.info("model set %s: unloading %s (least recently used) to make room", name, idle.name)
                self.unload(idle.name)

    def _least_recently_used_idle(self, name: str) -> ServedSet | None:
        idle = [
            served
            for served in self.sets
            if served.state == LOADED
            and served.name not in (name, COMPOSITE)  # the composite set holds no weights: unloading it frees nothing
            and not served.work.depth
            and not served.work.in_flight
        ]
        return min(idle, key=lambda served: served.last_used, default=None)

    def _ready(self, name: str, engine: Engine) -> None:
        self.metrics.model_set_loads.labels(name).inc()
        log.info("model set %s: loaded (%s)", name, engine.name)

    def _failed(self, served: ServedSet) -> Callable[[Exception], None]:
        def failed(exc: Exception) -> None:
            log.error("model set %s failed to load: %s", served.name, exc)
            with self.lock:
                served.state, served.reason = FAILED, public_reason(exc)
            threading.Thread(target=self._stop_failed, args=(served,), daemon=True).start()

        return failed

    def _stop_failed(self, served: ServedSet) -> None:
        """A failed load's other workers stop, and the requests waiting for it hear why."""
        self._retire_queue(served, Unavailable(f"model set {served.name!r} failed to load: {served.reason}"))
        release_memory()

    def _retire_queue(self, served: ServedSet, reason: Unavailable) -> None:
        """Stop the set's workers; a job that slipped into its queue meanwhile gets `reason`; a fresh queue
        waits for the next load."""
        work = served.work
        work.stop(timeout=self.settings.job_timeout_s)
        with self.lock:
            served.work = self.sets.fresh_queue(served.name)
            served.work.close(reason.message)  # a request that picked the set just before is refused, not left waiting
            served.engine, served.engine_name = None, None
        work.fail_waiting(reason)

    # -- unloading ------------------------------------------------------------------

    def unload(self, name: str) -> Unloaded:
        """Blocking: refuse new jobs, wait for those queued and running, stop the workers, free the memory."""
        started = time.monotonic()
        with self.lock:
            served = self._served(name)
            if served.state in (UNLOADED, UNLOADING):
                return Unloaded(name, 0.0, {}, {})
            if served.state == LOADING:
                raise Conflict(f"model set {name!r} is loading; unload it once it is loaded")
            was_failed, served.state = served.state == FAILED, UNLOADING
        if not served.work.wait_idle(self.settings.job_timeout_s):
            log.warning("model set %s: jobs still running after %.0f s; unloading", name, self.settings.job_timeout_s)
        before = self._held()
        self._retire_queue(served, Unavailable(_not_loaded_now(name), {"Retry-After": "10"}))
        release_memory()
        with self.lock:
            served.state = UNLOADED
        if not was_failed:
            self.metrics.model_set_unloads.labels(name).inc()
        done = Unloaded(name, time.monotonic() - started, before, self._held())
        log.info("model set %s: unloaded in %.1f s, %s bytes freed", name, done.seconds, done.freed_bytes)
        return done

    def _served(self, name: str) -> ServedSet:
        try:
            return self.sets.get(name)
        except KeyError:
            raise NotFound(f"model set {name!r} is not served here; served: {', '.join(self.sets.names)}") from None

    def _held(self) -> dict[str, int | None]:
        return {device: held_bytes(device) for device in dict.fromkeys(self.devices)}


def _not_loaded_now(name: str) -> str:
    return f"model set {name!r} was unloaded; an admin key loads it with POST /v1/models/{name}/load"


def _check_known(settings: Settings, name: str) -> None:
    """NotFound unless `name` is a set of the weights manifest (or composite); Conflict unless it is installed."""
    if name == COMPOSITE:
        return
    known = load_manifest().sets
    if name not in known:
        raise NotFound(f"no model set named {name!r}; known: {', '.join([*known, COMPOSITE])}")
    if find_model_set(settings.weights_dir, name, settings.ip_adapter) is None:
        raise Conflict(f"model set {name!r} is not installed here: segswap weights download {name}")
