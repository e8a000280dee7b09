"""Timing and its figures: the probe around each call (CUDA-synchronised, with its memory peak), the alternating
order, a served request by stage, and the numbers as the report writes them."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from pipelines import SwapJob
from server.benchmark.scene import ImageServer


class Probe:
    """Times a call (synchronising CUDA) and tracks the rise of CUDA's allocated-memory peak during it."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.activation_peak = 0

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, fn: Callable):
        cuda = self.torch.cuda
        self.sync()
        if self.cuda:
            base = cuda.memory_allocated(self.device)
            cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        out = fn()
        self.sync()
        seconds = time.perf_counter() - start
        if self.cuda:
            self.activation_peak = max(self.activation_peak, cuda.max_memory_allocated(self.device) - base)
        return seconds, out

    def peak_bytes(self, pipe) -> int | None:
        if self.cuda:
            return weights_bytes(pipe, "cuda") + self.activation_peak
        return peak_rss_bytes()


def served_request(engine, server: ImageServer, job: SwapJob, probe: Probe) -> tuple[dict[str, float], float]:
    """One request as the server runs it for URL inputs: fetch, decode, swap, encode; seconds by stage."""
    from server.inputs.decode import decode_image
    from server.inputs.encode import encode_image
    from server.inputs.fetch import fetch_url

    fields = {"main_image": "/main.png", "mask_image": "/mask.png", "object_image": "/object.png"}

    async def fetch_all() -> list[bytes]:
        return await asyncio.gather(
            *(
                fetch_url(server.url + path, field, max_bytes=64 * 1024 * 1024, timeout_s=30, allow=["127.0.0.1"])
                for field, path in fields.items()
            )
        )

    start = time.perf_counter()
    bodies = dict(zip(fields, asyncio.run(fetch_all()), strict=True))
    fetched = time.perf_counter()
    images = {field: decode_image(body, field, 400_000_000) for field, body in bodies.items()}
    decoded = time.perf_counter()
    served_job = dataclasses.replace(
        job,
        main_image=images["main_image"].convert("RGB"),
        mask_image=images["mask_image"],
        object_image=images["object_image"],
    )
    seconds, image = probe.time(lambda: engine.swap(served_job))
    encode_start = time.perf_counter()
    encode_image(image, "png", 95)
    end = time.perf_counter()
    stages = {
        "fetch_s": fetched - start,
        "decode_s": decoded - fetched,
        **engine.last_timings,
        "encode_s": end - encode_start,
    }
    return stages, seconds


def alternate(*runs: Callable[[], float], repeats: int) -> list[list[float]]:
    """Run each `repeats` times, in turn and every other round in reverse (ABBA, ABCCBA) so that drift hits all
    alike; each returns its own seconds."""
    samples: list[list[float]] = [[] for _ in runs]
    order = list(range(len(runs)))
    for index in range(repeats):
        for which in order if index % 2 == 0 else order[::-1]:
            samples[which].append(runs[which]())
    return samples


def summary(samples: list[float], peak_bytes: int | None) -> dict:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {
        "s_per_image_median": sig(median),
        "s_per_image_p90": sig(p90),
        "images_per_s": sig(1 / median) if median > 0 else None,
        "peak_memory_bytes": peak_bytes,
        "samples_s": rounded(samples),
    }


def psnr(image: Image.Image, reference: Image.Image) -> float | None:
    """Peak signal-to-noise ratio of `image` against `reference` in dB, on 8-bit RGB; None when identical."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return None if mse == 0 else sig(10 * np.log10(255.0**2 / mse))


def request_stages(samples: list[dict[str, float]]) -> dict:
    if not samples:
        return {}
    keys = ("fetch_s", "decode_s", "mask_ops_s", "embeds_s", "model_s", "encode_s")
    stages = {key: statistics.median(sample.get(key, 0.0) for sample in samples) for key in keys}
    total = sum(stages.values())
    outside = stages["fetch_s"] + stages["decode_s"] + stages["mask_ops_s"] + stages["encode_s"]
    return {
        **{key: sig(value) for key, value in stages.items()},
        "total_s": sig(total),
        "outside_model_share": sig(outside / total) if total > 0 else None,
    }


def weights_bytes(pipe, device_type: str | None = None) -> int:
    """Bytes of the pipeline's weights (on `device_type` only, when given: with CPU offload most are not)."""
    return module_bytes([c for c in pipe.components.values() if hasattr(c, "parameters")], device_type)


def module_bytes(modules, device_type: str | None = None) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (shared views count once)."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if device_type and tensor.device.type != device_type:
                continue
            storage = tensor.untyped_storage()
            seen[(tensor.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def ratio(a: float, b: float) -> float | None:
    return sig(a / b) if b > 0 else None


def sig(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant figures (tiny CPU models give tiny numbers; they must stay non-zero)."""
    return float(f"{value:.{digits}g}")


def rounded(values: list[float]) -> list[float]:
    return [sig(v) for v in values]


_STARTED = time.monotonic()


def log(message: str) -> None:
    """A progress line, with the seconds since start: where a long GPU run spends its time."""
    print(f"bench [{time.monotonic() - _STARTED:6.1f} s]: {message}", file=sys.stderr, flush=True)
