"""Test engines with controllable timing, for queue and lifecycle tests."""

from __future__ import annotations

import threading
import time

import numpy as np
from PIL import Image

from pipelines import CompositeEngine, InvalidInput, SwapJob


class GatedEngine:
    """Returns the main image; each swap waits for `gate` (if closed) and then `delay` seconds.

    `ran` lists the seeds of the jobs it actually ran, in order.
    """

    name = "gated"

    def __init__(self, delay: float = 0.0, busy: bool = False, run_log: str | None = None):
        self.delay, self.busy, self.run_log = delay, busy, run_log
        self.gate = threading.Event()
        self.gate.set()
        self.ran: list[int] = []
        self.started = threading.Event()
        self._work = np.ones((256, 256))
        self._lock = threading.Lock()
        self.active = 0  # swaps running now, and the most that ever ran at once
        self.most_at_once = 0

    def swap(self, job: SwapJob, progress=None) -> Image.Image:
        with self._lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        try:
            return self._swap(job)
        finally:
            with self._lock:
                self.active -= 1

    def _swap(self, job: SwapJob) -> Image.Image:
        self.started.set()
        self.gate.wait(30)
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            if self.busy:
                # Compute the way an engine does: native kernels that release the GIL while they run
                # (torch, numpy), with short Python steps in between.
                self._work = self._work @ self._work / 256.0
            else:
                time.sleep(0.005)
        with self._lock:
            self.ran.append(job.seed)
            if self.run_log:  # survives the process, for crash-and-restart tests
                with open(self.run_log, "a") as log:
                    log.write(f"{job.seed}\n")
        return job.main_image.copy()


class SteppingEngine:
    """Reports `steps` denoising steps, `delay` seconds apart, with a preview after each; returns the main image
    with the mask's region painted orange: a stand-in for a diffusion engine's progress, for the event stream."""

    name = "stepping"

    def __init__(self, steps: int = 6, delay: float = 0.15):
        self.steps, self.delay = steps, delay

    def swap(self, job: SwapJob, progress=None) -> Image.Image:
        out = job.main_image.convert("RGB").copy()
        region = job.mask_image.convert("L").resize(out.size).point(lambda value: 255 if value > 127 else 0)
        for step in range(1, self.steps + 1):
            time.sleep(self.delay)
            if progress is not None:
                progress(step, self.steps)
                if hasattr(progress, "preview"):
                    shade = 40 * step
                    progress.preview(lambda shade=shade: Image.new("RGB", (64, 48), (shade, 80, 160)))
        out.paste((250, 140, 20), mask=region)
        return out


class FailingEngine:
    """The composite engine for the first `succeed` jobs (the warm-up aside), then fails every job as an engine that
    hits bad input deep inside would."""

    name = "failing"

    def __init__(self, succeed: int = 0):
        self.succeed, self.composite, self.runs = succeed, CompositeEngine(), 0

    def swap(self, job: SwapJob, progress=None) -> Image.Image:
        if job.steps == 2:  # the server's warm-up
            return job.main_image.copy()
        self.runs += 1
        if self.runs > self.succeed:
            raise InvalidInput("the engine could not use this object", "object_image")
        return self.composite.swap(job)
