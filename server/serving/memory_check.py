"""Before any set loads: does every set fit on every device, next to the others? Refused at start, in one
sentence, rather than an out-of-memory failure on some later request.

Each device holds one copy of every set per worker it runs (`--devices cuda:0,cuda:0` is two). The figure
checked against is what the device has free now (the CUDA driver's count; on the CPU, the system's available
memory), or SEGSWAP_MEMORY_BUDGET_BYTES. With `cpu_offload` the weights stay in CPU memory: not checked.
The estimates (weights from the files, activations at the native size) are pipelines/models/memory.py's.
"""

from __future__ import annotations

import logging

from pipelines import EngineUnavailable, find_model_set
from pipelines.models.memory import MemoryEstimate, available_bytes, dtype_bytes, estimate
from pipelines.models.model_sets import COMPOSITE, ModelSet
from server.settings import Settings

log = logging.getLogger("segswap")


class DoesNotFit(EngineUnavailable):
    """A model set needs more memory than its device has left: the server does not start."""


def check_memory(settings: Settings, names: list[str], devices: list[str]) -> None:
    """Raise DoesNotFit naming the first set that does not fit on a device, after the sets before it."""
    if settings.cpu_offload:
        return
    found = [model_set for name in names if (model_set := _installed(settings, name)) is not None]
    if not found:
        return
    for device in dict.fromkeys(devices):
        _check_device(settings, found, device, devices.count(device))


def _installed(settings: Settings, name: str) -> ModelSet | None:
    """The set's files when installed (a missing set is the loader's to explain, in its own words)."""
    if name == COMPOSITE:
        return None
    return find_model_set(settings.weights_dir, name, settings.ip_adapter)


def _check_device(settings: Settings, found: list[ModelSet], device: str, workers: int) -> None:
    budget = settings.memory_budget_bytes
    free = budget if budget is not None else available_bytes(device)
    if free is None:
        log.warning("free memory on %s cannot be read: the model sets' sizes are not checked", device)
        return
    used, placed = 0, []
    for model_set in found:
        need = estimate(model_set, dtype_bytes(device, settings.dtype))
        if used + need.total * workers > free:
            raise DoesNotFit(_refusal(model_set.name, device, need, workers, free - used, budget is not None, placed))
        used += need.total * workers
        placed.append(model_set.name)
        log.info("memory: %s needs about %s on %s (x%d)", model_set.name, gigabytes(need.total), device, workers)
    what = "budgeted" if budget is not None else "free"
    log.info("memory: %s of %s %s on %s taken by the model sets", gigabytes(used), gigabytes(free), what, device)


def _refusal(name: str, device: str, need: MemoryEstimate, workers: int, left: int, budgeted: bool, placed) -> str:
    copies = f", x{workers} workers" if workers > 1 else ""
    after = f" after {', '.join(placed)}" if placed else ""
    return (
        f"model set {name} does not fit on {device}: it needs about {gigabytes(need.total * workers)} "
        f"({gigabytes(need.weights)} of weights, {gigabytes(need.activations)} of activations at "
        f"{need.native_side}x{need.native_side}{copies}) and {gigabytes(max(0, left))} is "
        f"{'left of the budget' if budgeted else 'free'}{after}; serve fewer sets, or set SEGSWAP_MEMORY_BUDGET_BYTES"
    )


def gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 10**7 else f"{count / 1e6:.1f} MB"


def check_fits(settings: Settings, name: str, loaded: list[str], devices: list[str]) -> None:
    """Before a set loads at runtime: DoesNotFit unless `name` fits next to the `loaded` sets; against the budget
    they are counted in, against the devices' free memory they already are."""
    check_memory(settings, [*loaded, name] if settings.memory_budget_bytes is not None else [name], devices)
