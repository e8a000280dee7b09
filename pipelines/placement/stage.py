"""The placement stage: which mode, then the object or the pattern placed, then blended into the scene."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.imageops import Box, feathered_paste, grow_mask, mask_box, normalize_mask
from pipelines.job import SwapJob
from pipelines.placement.cutout import cut_out
from pipelines.placement.fill import surroundings
from pipelines.placement.objects import place_object
from pipelines.placement.patterns import place_pattern


@dataclass(frozen=True)
class Placement:
    """The scene with the object placed (full size, RGB), the masks, and the object as placed on its own."""

    image: Image.Image
    mask: np.ndarray  # the caller's mask at the scene's size
    grown: np.ndarray  # the grown mask: no pixel outside it differs from the scene
    box: Box  # the grown mask's box
    mode: str  # "object", "pattern" or "erase"
    reference: Image.Image  # the cut-out (RGBA) or the pattern (RGB; as tiled: grid_reference)
    coverage: np.ndarray  # 0..1 at the scene's size: where the object's (or pattern's) own pixels were put


def work_window(grown: np.ndarray) -> Box:
    """The part of the scene a placement reads: the grown mask's box and the surroundings the fill copies from."""
    return mask_box(grown, margin=surroundings(mask_box(grown)))


def resolve_mode(job: SwapJob) -> str:
    """`auto` is pattern when a repeat is above 1, else object."""
    if job.mode != "auto":
        return job.mode
    return "pattern" if max(job.horizontal_repeat, job.vertical_repeat) > 1 else "object"


def place(job: SwapJob, cut: Callable[[Image.Image], Image.Image] = cut_out) -> Placement:
    """Put the job's object or pattern into its scene; `subject_strength` is the placement's opacity.

    The work runs on a window of the scene around the grown mask's box (the box and the margin the fill reads
    its surroundings from), never on the whole image: only the box's pixels are written. `cut` cuts the
    object out (an engine passes its cache's).
    """
    main = job.main_image.convert("RGB")
    mask = normalize_mask(job.mask_image, main.size)
    grown = grow_mask(mask, job.growmask)
    box = mask_box(grown)
    window = work_window(grown)
    wl, wt, wr, wb = window
    scene = np.asarray(main.crop(window), dtype=np.float32)
    local_mask, local_grown = mask[wt:wb, wl:wr], grown[wt:wb, wl:wr]
    left, top, right, bottom = box
    local_box = (left - wl, top - wt, right - wl, bottom - wt)
    mode = resolve_mode(job)
    coverage = np.zeros(mask.shape, np.float32)
    if mode == "pattern":
        reference = job.object_image.convert("RGB")
        placed = place_pattern(
            scene,
            local_mask,
            local_grown,
            local_box,
            reference,
            job.horizontal_repeat,
            job.vertical_repeat,
            job.fashion_strength,
        )
        coverage[mask] = 1.0
    else:
        reference = cut(job.object_image)
        placed, alpha = place_object(scene, local_grown, local_box, reference, job.fashion_strength, job.seed)
        coverage[top:bottom, left:right] = alpha * grown[top:bottom, left:right]
    inside = (slice(top - wt, bottom - wt), slice(left - wl, right - wl))
    placed = scene[inside] + job.subject_strength * (placed[inside] - scene[inside])
    patch = Image.fromarray(np.clip(np.rint(placed), 0, 255).astype(np.uint8), "RGB")
    image = feathered_paste(main, patch, box, grown, feather=max(1, job.growmask))
    return Placement(image, mask, grown, box, mode, reference, coverage)
