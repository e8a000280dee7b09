"""The composite engine: the placement stage on its own, no model.

It is the default when no weights are installed: deterministic, CPU-only and fast. It re-draws nothing
beyond what placement does (cut-out, fill, fit, colour, shading, blend), and says so: its engine name is
`composite`. An erase is the fill alone (pipelines/placement/erase.py); its prompt is not read.
"""

from __future__ import annotations

from PIL import Image

from pipelines.engines.loras import check_lora
from pipelines.interface import ProgressFn
from pipelines.job import SwapJob
from pipelines.placement.cache import OBJECT_CACHE_BYTES, ImageCache


class CompositeEngine:
    """Places the object (or tiles the pattern) into the grown mask and blends it into the scene. Cut-outs of
    recent objects are kept (`object_cache_bytes`, 0: none)."""

    name = "composite"

    def __init__(self, object_cache_bytes: int = OBJECT_CACHE_BYTES):
        self.objects = ImageCache(object_cache_bytes)

    def swap(self, job: SwapJob, progress: ProgressFn | None = None) -> Image.Image:
        check_lora(self, job.lora)
        result = self.objects.place(job)[0].image
        if progress is not None:
            progress(1, 1)
        return result
