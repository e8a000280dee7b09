"""A diffusion engine's swap in three stages: `prepare` (placement, crop, reference, schedule: CPU work),
`generate` (the model, on its device) and `finish` (colour match, detail, paste: CPU work). `swap` runs them in
a row; a server's worker runs one job's model while it prepares the next and finishes the last
(server/serving/work_queue.py). `prepare` and `finish` touch nothing `generate` does, so they may run on
other threads while it runs."""

from __future__ import annotations

import time

from PIL import Image

from pipelines.engines.diffusion import fp8
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.engines.diffusion.stitch import Prepared
from pipelines.interface import ProgressFn
from pipelines.job import SwapJob
from pipelines.models.model_sets import ModelSet
from pipelines.torch_runtime import pick_device


class StagedEngine:
    """`swap` from the three stages, with the seconds of each in `last_timings`: mask_ops_s (prepare and
    finish: image work), embeds_s (prompt and image embeddings, cached or not), model_s (the rest of generate)."""

    last_timings: dict[str, float]
    embeds_s: float = 0.0  # set by generate: its share spent on embeddings

    def _configure(self, model_set: ModelSet, options: DiffusionOptions | None) -> None:
        """The set, the device and dtype it runs in, and the options resolved for that device (FP8 refused at
        once where the device has no float8 tensor cores)."""
        options = options or DiffusionOptions()
        self.model_set = model_set
        self.device, self.dtype = pick_device(options.device, options.dtype)
        self.options = options.resolved(self.device.type)
        if self.options.fp8:
            fp8.require(self.device)

    def swap(self, job: SwapJob, progress: ProgressFn | None = None) -> Image.Image:
        start = time.perf_counter()
        prepared = self.prepare(job)
        ready = time.perf_counter()
        generated = self.generate(job, prepared, progress)
        generated_at = time.perf_counter()
        result = self.finish(job, prepared, generated)
        end = time.perf_counter()
        self.last_timings = {
            "mask_ops_s": (ready - start) + (end - generated_at),
            "embeds_s": self.embeds_s,
            "model_s": generated_at - ready - self.embeds_s,
        }
        return result

    def prepare(self, job: SwapJob) -> Prepared:
        raise NotImplementedError

    def generate(self, job: SwapJob, prepared: Prepared, progress: ProgressFn | None = None):
        """The model's output, left on its device."""
        raise NotImplementedError

    def finish(self, job: SwapJob, prepared: Prepared, generated) -> Image.Image:
        """The scene with the result in it, from `generate`'s output (or an image of the crop)."""
        raise NotImplementedError
