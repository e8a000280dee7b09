"""The composite engine: no model, just placement, colour harmonisation and a feathered blend.

It is the embedded default when no weights are installed: deterministic, CPU-only
and fast. It does not re-draw anything, and says so: its engine name is `composite`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.imageops import feathered_paste, fit_centered, grow_mask, mask_box, normalize_mask, tile_object
from pipelines.interface import ProgressFn
from pipelines.job import SwapJob

# Share of the gap between the object's and the scene's mean colour that is always
# closed, so that even at fashion_strength 1 the object takes on some of the scene's light.
LIGHT_MATCH = 0.2


class CompositeEngine:
    """Fits the tiled object into the grown mask's box and blends it into the scene."""

    name = "composite"

    def swap(self, job: SwapJob, progress: ProgressFn | None = None) -> Image.Image:
        main = job.main_image.convert("RGB")
        grown = grow_mask(normalize_mask(job.mask_image, main.size), job.growmask)
        box = mask_box(grown)
        left, top, right, bottom = box
        width, height = right - left, bottom - top

        tiled = tile_object(
            job.object_image.convert("RGBA"), job.horizontal_repeat, job.vertical_repeat, max(width, height)
        )
        fitted, (fl, ft, fr, fb) = fit_centered(tiled, (width, height))
        scene = np.asarray(main, dtype=np.float32)
        obj_rgb = np.asarray(fitted.convert("RGB"), dtype=np.float32)
        obj_alpha = np.asarray(fitted.getchannel("A"), dtype=np.float32)[..., None] / 255.0
        obj_rgb = harmonise(obj_rgb, obj_alpha[..., 0] > 0, _surroundings(scene, grown, box), job.fashion_strength)

        region = scene[top:bottom, left:right].copy()
        under = region[ft:fb, fl:fr]
        opacity = obj_alpha * job.subject_strength
        region[ft:fb, fl:fr] = under + opacity * (obj_rgb - under)
        patch = Image.fromarray(np.clip(np.rint(region), 0, 255).astype(np.uint8), "RGB")
        result = feathered_paste(main, patch, box, grown, feather=max(1, job.growmask))
        if progress is not None:
            progress(1, 1)
        return result


def _surroundings(scene: np.ndarray, grown: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Scene pixels around the region: the box's pixels outside the grown mask, else the whole image."""
    left, top, right, bottom = box
    ring = scene[top:bottom, left:right][~grown[top:bottom, left:right]]
    return ring if len(ring) else scene.reshape(-1, 3)


def harmonise(obj: np.ndarray, covered: np.ndarray, scene_pixels: np.ndarray, fashion_strength: float) -> np.ndarray:
    """Pull the object's colours towards the scene's.

    Per-channel mean/std transfer, applied with weight (1 - fashion_strength): at 1
    the object keeps its own colour and texture (only LIGHT_MATCH of the mean gap is
    closed), at 0 it takes the scene's colour statistics.
    """
    pixels = obj[covered] if covered.any() else obj.reshape(-1, 3)
    obj_mean, obj_std = pixels.mean(axis=0), pixels.std(axis=0) + 1e-3
    scene_mean, scene_std = scene_pixels.mean(axis=0), scene_pixels.std(axis=0) + 1e-3
    transferred = (obj - obj_mean) * (scene_std / obj_std) + scene_mean
    light_matched = obj + LIGHT_MATCH * (scene_mean - obj_mean)
    pull = 1.0 - fashion_strength
    return np.clip(light_matched + pull * (transferred - light_matched), 0.0, 255.0)
