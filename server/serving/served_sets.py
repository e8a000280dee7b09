"""The model sets one server serves, each with its own queue and workers (one per device); the first is the default.

`--model-set sd15,flux2-klein` serves both side by side: a request picks one by name (`model_set`, or `model` on
the OpenAI route) and waits in that set's queue only. A name not served is a 400 that lists those served. One
set named, or none, is the single-set server: the set `--engine` picks (named by the complete set it finds,
else composite).

A set's state: loading -> loaded -> unloading -> unloaded (-> loading again), or failed (its load failed at
runtime: the reason is kept). Only a loaded set takes requests; one that is not is a 503 saying so, unless
the server loads sets lazily (server/serving/set_loading.py), in which case naming it starts its load and
the request waits in its queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from pipelines import Engine, find_model_set
from pipelines.engines.loras import check_lora
from pipelines.models.model_sets import COMPOSITE
from server.errors import BadRequest, Unavailable
from server.serving.priority import Priority
from server.serving.work_queue import WorkQueue
from server.settings import Settings

LOADING, LOADED, UNLOADING, UNLOADED, FAILED = "loading", "loaded", "unloading", "unloaded", "failed"

routed_set: ContextVar[str | None] = ContextVar("routed_set", default=None)
"""The set a router sent this request to, if any (Ray Serve: the `serve_multiplexed_model_id` header,
server/deployment/multiplexing.py): the request runs on it when it names no set itself."""


@dataclass(eq=False)
class ServedSet:
    name: str
    work: WorkQueue
    state: str = LOADING
    reason: str | None = None  # why its last runtime load failed
    engine_name: str | None = None  # the engine its workers run, once every one of them is warm
    engine: Engine | None = None  # one of them, for what a request can be checked against before it queues
    since: float = field(default_factory=time.time)  # when it was configured, then when it became ready
    last_used: float = field(default_factory=time.monotonic)  # for least-recently-used unloading

    @property
    def loaded(self) -> bool:
        return self.state == LOADED

    def lora_names(self) -> list[str]:
        """The LoRAs a request may name for this set (none until it is loaded, or on an engine without LoRAs)."""
        loras = getattr(self.engine, "loras", None)
        return loras.names() if loras is not None else []

    def check_lora(self, name: str) -> None:
        """An InvalidInput (field lora) unless the set's engine runs LoRA `name` ("" = none)."""
        if self.engine is not None:
            check_lora(self.engine, name)


class ServedSets:
    def __init__(self, names: list[str], make_queue: Callable[[str], WorkQueue]):
        self._make_queue = make_queue
        self._sets = {name: ServedSet(name, make_queue(name)) for name in names}
        self.load_on_demand: Callable[[ServedSet], None] | None = None  # lazy loading: starts a set's load

    @property
    def default(self) -> ServedSet:
        return next(iter(self._sets.values()))

    @property
    def names(self) -> list[str]:
        return list(self._sets)

    def __iter__(self) -> Iterator[ServedSet]:
        return iter(list(self._sets.values()))

    def get(self, name: str) -> ServedSet:
        return self._sets[name]

    def fresh_queue(self, name: str) -> WorkQueue:
        """An empty queue for set `name`, with no workers yet (its next load starts them)."""
        return self._make_queue(name)

    def add(self, name: str) -> ServedSet:
        """The set `name`, made known (unloaded) if it was not."""
        if name not in self._sets:
            self._sets[name] = ServedSet(name, self._make_queue(name), state=UNLOADED)
        return self._sets[name]

    def pick(self, name: str | None) -> ServedSet:
        """The set a request names (the default when it names none): a 400 listing the sets served when it is
        none of them, a 503 when it is not loaded (unless it loads on demand: then it is loading)."""
        name = _with_route(name)
        found = self.default if name is None else self._sets.get(name)
        if found is None:
            raise BadRequest(
                f"model set {name!r} is not served here; served: {', '.join(self.names)} (default {self.default.name})"
            )
        if found.state == UNLOADED and self.load_on_demand is not None:  # a failed set waits for an admin's load
            self.load_on_demand(found)
        if found.state not in (LOADED, LOADING) or (found.state == LOADING and self.load_on_demand is None):
            raise Unavailable(_not_loaded(found), {"Retry-After": "10"})
        found.last_used = time.monotonic()
        return found

    def default_refused(self) -> str | None:
        """Why a request that names no set is refused now (the default set is not loaded and does not load on
        demand), or None: what readiness answers, since the hosted contract's requests name no set."""
        served = self.default
        if served.state == LOADED or (self.load_on_demand is not None and served.state in (UNLOADED, LOADING)):
            return None
        return f"the default {_not_loaded(served)}"

    async def pick_async(self, name: str | None) -> ServedSet:
        """`pick` for the event loop: in a thread when it may load a set on demand (making room unloads others,
        which waits for their workers to stop)."""
        if self.load_on_demand is None:
            return self.pick(name)
        return await asyncio.to_thread(self.pick, name)

    def warm(self, name: str, engine: Engine) -> None:
        """All of the set's workers are warm (`engine`: one of them)."""
        served = self._sets[name]
        served.state, served.reason = LOADED, None
        served.engine, served.engine_name, served.since = engine, engine.name, time.time()

    @property
    def depth(self) -> int:
        return sum(served.work.depth for served in self)

    def depth_of(self, priority: Priority) -> int:
        return sum(served.work.depth_of(priority) for served in self)

    @property
    def in_flight(self) -> int:
        return sum(served.work.in_flight for served in self)

    @property
    def workers(self) -> int:
        return sum(served.work.workers for served in self)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no set has work queued or running (or `timeout` passes); True if idle."""
        end = time.monotonic() + timeout
        return all(served.work.wait_idle(max(0.0, end - time.monotonic())) for served in self)

    def stop(self) -> None:
        for served in self:
            served.work.stop()


def _with_route(name: str | None) -> str | None:
    """The set a request names, else the one it was routed to; a 400 when it names another than its route."""
    routed = routed_set.get()
    if routed is None or name in (None, routed):
        return routed or name
    raise BadRequest(
        f"model_set {name!r} and the serve_multiplexed_model_id header {routed!r} disagree; "
        "send the same set in both, or only the header"
    )


def _not_loaded(served: ServedSet) -> str:
    if served.state == FAILED:
        return f"model set {served.name!r} failed to load: {served.reason}"
    doing = {LOADING: "is loading", UNLOADING: "is being unloaded"}.get(served.state, "is not loaded")
    return f"model set {served.name!r} {doing}; an admin key loads it with POST /v1/models/{served.name}/load"


def served_set_names(settings: Settings) -> tuple[list[str], bool]:
    """The sets the settings serve, the default first, and whether they were named (else: what `engine` finds)."""
    if settings.engine == "composite":
        return [COMPOSITE], True
    if settings.model_set_names:
        return settings.model_set_names, True
    found = find_model_set(settings.weights_dir, None, settings.ip_adapter)
    return [found.name if found is not None else COMPOSITE], False
