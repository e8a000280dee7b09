"""The one interface every engine implements: a plain job in, an image out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image

from pipelines.job import SwapJob

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) while an engine works (denoising steps, for the model).

A progress callable may also have a `preview(make)` method: an engine that can show its work in progress calls
it after a step with `make`, a function of no arguments that renders a small RGB preview of that step (cheap,
and only run by whoever wants to see it)."""


class Engine(Protocol):
    """Swaps the object of a job into its main image.

    `name` says which engine made an image (`composite`, `diffusion/sdxl`, ...);
    the server sends it as the `x-segswap-engine` header. `swap` returns an RGB
    image of the main image's size; it raises `pipelines.errors.InvalidInput`
    for input it cannot use.
    """

    name: str

    def swap(self, job: SwapJob, progress: ProgressFn | None = None) -> Image.Image: ...
