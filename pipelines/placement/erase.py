"""The placement of an erase: nothing is placed; what the grown mask covers is filled from its surroundings.

It is the composite engine's whole erase, and what the diffusion engines start from (a plausible background,
so the denoiser does not have to invent one from the old content or from grey).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.errors import InvalidInput
from pipelines.imageops import grow_mask, mask_box, normalize_mask
from pipelines.job import ERASE, SwapJob
from pipelines.placement.fill import remove_content
from pipelines.placement.stage import Placement, work_window

# What an erase shows as "the object on its own": nothing, an empty white square. The engines give it no
# weight (IP-Adapter at scale 0, no FLUX.2 reference); it is there because a Placement always has one.
NOTHING = Image.new("RGB", (8, 8), (255, 255, 255))


def place_erase(job: SwapJob) -> Placement:
    """The scene with the grown mask filled; every pixel outside the grown mask is the scene's own.

    The fill reads a window around the grown mask's box (work_window, as a swap's placement does), never
    the whole image.
    """
    main = job.main_image.convert("RGB")
    mask = normalize_mask(job.mask_image, main.size)
    grown = grow_mask(mask, job.growmask)
    if grown.all():
        raise InvalidInput(
            "covers the whole image (after growmask): an erase fills the region from the scene around it, and "
            "none is left",
            "mask_image",
        )
    left, top, right, bottom = mask_box(grown)
    wl, wt, wr, wb = work_window(grown)
    local_grown = grown[wt:wb, wl:wr]
    local_box = (left - wl, top - wt, right - wl, bottom - wt)
    scene = np.asarray(main.crop((wl, wt, wr, wb)), dtype=np.float32)
    filled = remove_content(scene, local_grown, local_box, job.seed)
    patch = Image.fromarray(np.clip(np.rint(filled), 0, 255).astype(np.uint8), "RGB")
    image = main.copy()
    image.paste(patch, (wl, wt), Image.fromarray(local_grown.astype(np.uint8) * 255, "L"))  # 0: untouched
    coverage = np.zeros(mask.shape, np.float32)  # no object pixel anywhere
    return Placement(image, mask, grown, (left, top, right, bottom), ERASE, NOTHING, coverage)
