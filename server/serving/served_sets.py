"""The model sets one server serves, each with its own queue and workers (one per device); the first is the default.

`--model-set sd15,flux2-klein` serves both side by side: a request picks one by name (`model_set`, or `model` on
the OpenAI route) and waits in that set's queue only. A name not served is a 400 that lists those served. One
set named, or none, is the single-set server: the set `--engine` picks (named by the complete set it finds,
else composite).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pipelines import Engine, find_model_set
from pipelines.engines.loras import check_lora
from pipelines.models.model_sets import COMPOSITE
from server.errors import BadRequest
from server.serving.priority import Priority
from server.serving.work_queue import WorkQueue
from server.settings import Settings


@dataclass(eq=False)
class ServedSet:
    name: str
    work: WorkQueue
    engine_name: str | None = None  # the engine its workers run, once every one of them is warm
    engine: Engine | None = None  # one of them, for what a request can be checked against before it queues
    since: float = field(default_factory=time.time)  # when it was configured, then when it became ready

    @property
    def loaded(self) -> bool:
        return self.engine_name is not None

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
        self._sets = {name: ServedSet(name, make_queue(name)) for name in names}

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

    def pick(self, name: str | None) -> ServedSet:
        """The set a request names (the default when it names none); a 400 listing the sets served otherwise."""
        if name is None:
            return self.default
        found = self._sets.get(name)
        if found is None or not found.loaded:
            raise BadRequest(
                f"model set {name!r} is not served here; served: {', '.join(self.names)} (default {self.default.name})"
            )
        return found

    def warm(self, name: str, engine: Engine) -> None:
        """All of the set's workers are warm (`engine`: one of them)."""
        served = self._sets[name]
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


def served_set_names(settings: Settings) -> tuple[list[str], bool]:
    """The sets the settings serve, the default first, and whether they were named (else: what `engine` finds)."""
    if settings.engine == "composite":
        return [COMPOSITE], True
    if settings.model_set_names:
        return settings.model_set_names, True
    found = find_model_set(settings.weights_dir, None, settings.ip_adapter)
    return [found.name if found is not None else COMPOSITE], False
