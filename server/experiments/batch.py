"""A batch of swaps on this machine: one engine load, inputs read and decoded ahead while the engine works."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import Engine, InvalidInput, SegswapError, SwapJob, build_job
from pipelines.models.model_sets import set_of_engine
from server.errors import ServiceError
from server.experiments.jobs_file import Entry
from server.experiments.outputs import is_complete, write_output
from server.experiments.regions import RegionMasks
from server.inputs.decode import decode_inputs
from server.inputs.encode import check_encodable, encode_output
from server.inputs.metadata import input_digests, output_record
from server.inputs.resolve import read_source
from server.settings import Settings

log = logging.getLogger("segswap.batch")
AHEAD = 4  # jobs read and decoded ahead of the engine (bounded: each holds its decoded images)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "done": self.done,
            "skipped": self.skipped,
            "images_per_s": round(self.images_per_s, 3),
            "seconds": round(self.seconds, 3),
            "failed": [{"name": n, "reason": r} for n, r in self.failed],
        }


def pending(entries: list[Entry], out_dir: Path, summary: Summary) -> list[Entry]:
    """The entries still to run: invalid lines are recorded as failed, complete outputs as skipped."""
    todo = []
    for entry in entries:
        if entry.error is not None:
            summary.failed.append((entry.name, f"line {entry.line}: {entry.error}"))
        elif is_complete(out_dir, entry.name, entry.request.image_format):
            summary.skipped += 1
        else:
            todo.append(entry)
    return todo


def run_local(entries: list[Entry], engine: Engine, out_dir: Path, settings: Settings, progress=None) -> Summary:
    """Run every pending entry through `engine`; `progress(entry)` is called after each one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    todo = deque(pending(entries, out_dir, summary))
    regions = RegionMasks(settings)
    start = time.perf_counter()
    with ThreadPoolExecutor(AHEAD, thread_name_prefix="segswap-batch-read") as pool:
        window: deque[tuple[Entry, Future]] = deque()

        def read_ahead() -> None:
            while todo and len(window) < AHEAD:
                entry = todo.popleft()
                window.append((entry, pool.submit(prepare, entry, settings, regions)))

        read_ahead()
        while window:
            entry, prepared = window.popleft()
            read_ahead()
            try:
                _run_one(entry, prepared.result(), engine, out_dir)
                summary.done += 1
            except Exception as exc:  # one bad line must not stop the batch
                summary.failed.append((entry.name, f"line {entry.line}: {describe(exc)}"))
                log.warning("%s (line %d) failed: %s", entry.name, entry.line, describe(exc))
            if progress is not None:
                progress(entry)
    summary.seconds = time.perf_counter() - start
    return summary


@dataclass
class Prepared:
    job: SwapJob
    inputs: dict[str, str]  # the sha256 of each input, for the output's record
    settings: Settings


def prepare(entry: Entry, settings: Settings, regions: RegionMasks) -> Prepared:
    """The entry's images read (or fetched) and decoded, checked, its region selected, as a job."""
    data = {name: read_source(source, name, settings) for name, source in entry.sources.items()}
    images = decode_inputs(data, settings.max_image_pixels)
    check_encodable(images["main_image"].size, entry.request.image_format)
    regions.add_mask(images, entry.request)
    job = build_job(entry.request.model_dump(), images)
    return Prepared(job, input_digests(images), settings)


def _run_one(entry: Entry, prepared: Prepared, engine: Engine, out_dir: Path) -> None:
    request, job = entry.request, prepared.job
    if request.model_set not in (None, set_of_engine(engine.name)):  # one engine here: a line never runs another
        raise InvalidInput(
            f"this batch runs the model set {set_of_engine(engine.name)}, not {request.model_set}: run it with "
            "--model-set, or send the batch to a server that serves both (--server)",
            "model_set",
        )
    started = time.perf_counter()
    image = engine.swap(job)
    seconds = time.perf_counter() - started
    settings, fields = prepared.settings, request.model_dump()
    record = output_record(settings.output_metadata, fields, job.seed, engine.name, prepared.inputs)
    data = encode_output(image, request.image_format, request.image_quality, record, settings)
    write_output(out_dir, entry.name, request.image_format, data, metadata(entry, job.seed, engine.name, seconds))


def metadata(entry: Entry, seed: int, engine: str, seconds: float | None) -> dict:
    """What made an output: the line's parameters (images by source), the seed used, the engine."""
    values = entry.request.model_dump(exclude={"base64"})
    values.update(entry.sources, seed=seed)
    return {"name": entry.name, "line": entry.line, "engine": engine, "seconds": seconds, "parameters": values}


def describe(exc: Exception) -> str:
    if isinstance(exc, InvalidInput):
        return exc.describe()
    if isinstance(exc, ServiceError | SegswapError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
