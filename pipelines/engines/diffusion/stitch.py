"""Crop and stitch, shared by the diffusion engines: the model works on a crop around the grown mask at its
native area, and only the grown mask of its result goes back into the scene. The stitch runs on the model's
device (device_ops.py); one transfer brings the finished box to the CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines.engines.diffusion.device_ops import match_to, pixels, plane, resize
from pipelines.engines.diffusion.geometry import context_box, crop_geometry, crop_mask
from pipelines.imageops import Box, paste_opacity
from pipelines.placement import Placement


@dataclass(frozen=True)
class Crop:
    """Where the model works: a box of the scene, its processing size, and what it sees at that size."""

    box: Box
    size: tuple[int, int]
    init: Image.Image  # the placed scene inside the box, at the processing size
    grown: np.ndarray  # the grown mask at the processing size: what is pasted back
    repainted: np.ndarray  # the pipeline's mask: the grown mask widened to whole latent cells or more

    def weights(self, values: np.ndarray) -> np.ndarray:
        """A full-size float map (0..1) cut to the box and scaled to the processing size."""
        left, top, right, bottom = self.box
        part = Image.fromarray(np.ascontiguousarray(values[top:bottom, left:right], dtype=np.float32), "F")
        return np.asarray(part.resize(self.size, Image.Resampling.BILINEAR), dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    """One swap up to the model: the placement, the crop, the reference, and how the model will run it
    (`schedule`: the pipeline's strength, num_inference_steps and timesteps or sigmas, for `scheduler`)."""

    placement: Placement
    crop: Crop
    reference: Image.Image | None  # None: the model gets none (an erase on FLUX.2)
    steps: int
    guidance: float
    schedule: dict
    scheduler: object | None = None  # None: the pipeline's own
    reference_key: tuple = ()  # what the reference is made from: the object's content digest, mode, ...

    def pipeline_arguments(self) -> dict:
        """What every engine hands its pipeline besides conditioning: the crop, its mask and the schedule."""
        return dict(
            self.schedule,
            image=self.crop.init,
            mask_image=Image.fromarray(self.crop.repainted.astype(np.uint8) * 255, "L"),
            guidance_scale=self.guidance,
        )


def crop_around(
    placement: Placement,
    native_side: int,
    multiple: int,
    repaint: Callable[[np.ndarray], np.ndarray],
    max_area: int | None = None,
) -> Crop:
    """The crop for a placement; `repaint` turns the grown mask (at processing size) into the pipeline's mask."""
    box, size = crop_geometry(
        context_box(placement.grown, placement.image.size), placement.image.size, native_side, multiple, max_area
    )
    init = placement.image.crop(box).resize(size, Image.Resampling.LANCZOS)
    grown = crop_mask(placement.grown, box, size)
    return Crop(box, size, init, grown, repaint(grown))


def stitch(main: Image.Image, generated: torch.Tensor, crop: Crop, placement: Placement, growmask: int) -> Image.Image:
    """Paste the model's result (3, H, W in 0..255, on its device) back inside the grown mask, feathered; every
    pixel outside is `main`'s own (its opacity is 0 there, and the blend leaves it exactly).

    Its colour is first matched to the scene's in the ring the model repainted outside the grown mask, so
    that a drift in the model's colours does not show as a seam.
    """
    left, top, right, bottom = crop.box
    device = generated.device
    base = pixels(main.crop(crop.box), device)
    ring = plane(crop.repainted & ~crop.grown, device) > 0.5
    matched = match_to(generated, resize(base, crop.size), ring)
    patch = resize(matched, (right - left, bottom - top)).clamp(0.0, 255.0)
    opacity = plane(paste_opacity(placement.grown, crop.box, max(1, growmask)), device)
    blended = (base + opacity * (patch - base)).round().clamp(0, 255).to(torch.uint8)
    out = main.copy()
    out.paste(Image.fromarray(blended.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB"), (left, top))
    return out
