"""Removing what the mask held: the region filled from its surroundings, with their grain.

The fill is a pull-push interpolation (a weighted image pyramid: holes are averaged from the known pixels at
the first level coarse enough to see them, then refined level by level). Unlike OpenCV's Telea or Navier-Stokes
inpainting, which march in from the edge and meet in diagonal seams on a large hole, it gives a smooth
continuation of the surroundings' light and colour. It is only seen around the placed object, so it runs at a
working size. Grain of the surroundings' strength is added so it does not read as a smear. (Copying the
surroundings' texture in blocks was tried: on real photographs the blocks picked up pieces of outlines and read
as tiles, worse than a smooth fill.)
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.imageops import Box

WORK_SIDE = 192  # the fill is computed with the region's long side at this many pixels
RING = 12  # pixels around the mask whose grain strength the fill takes
DETAIL_SIGMA = 1.5  # grain = the image minus its blur at this sigma
GRAIN_SAMPLES = 8192  # ring pixels the grain's strength is measured on
SURROUNDINGS = RING * 2  # how far past the mask's box the fill reads the scene


def remove_content(scene: np.ndarray, mask: np.ndarray, box: Box, seed: int) -> np.ndarray:
    """`scene` (float RGB) with the pixels under `mask` replaced by an inpainted fill; others untouched."""
    left, top, right, bottom = _with_margin(box, scene.shape, SURROUNDINGS)
    region = scene[top:bottom, left:right]
    region_mask = mask[top:bottom, left:right]
    height, width = region_mask.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(np.clip(region, 0, 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(region_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    small_mask = cv2.dilate(small_mask, np.ones((3, 3), np.uint8))  # the downscaled edge pixels hold old content
    filled = pull_push(small.astype(np.float32), small_mask.astype(bool))
    filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_CUBIC)
    filled += _grain(region, region_mask, np.random.default_rng(seed))
    out = scene.copy()
    out[top:bottom, left:right] = np.where(region_mask[..., None], filled, region)
    return out


def pull_push(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` with `hole` pixels interpolated from the others over a weighted pyramid (known pixels unchanged)."""
    weight = (~hole).astype(np.float32)
    if not weight.any():
        return image
    levels = [(image * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 1 and (levels[-1][1] <= 0).any():
        colour, known = levels[-1]
        levels.append((cv2.pyrDown(colour), cv2.pyrDown(known)))
    colour, known = levels[-1]
    estimate = colour / np.maximum(known, 1e-6)[..., None]
    for colour, known in reversed(levels[:-1]):
        estimate = cv2.resize(estimate, (known.shape[1], known.shape[0]), interpolation=cv2.INTER_LINEAR)
        confidence = np.clip(known, 0.0, 1.0)[..., None]
        estimate = colour / np.maximum(known, 1e-6)[..., None] * confidence + estimate * (1.0 - confidence)
    return np.where(hole[..., None], estimate, image)


def _grain(region: np.ndarray, region_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise with the strength (robust spread) of the fine detail just around the hole."""
    detail = region - cv2.GaussianBlur(region, (0, 0), DETAIL_SIGMA)
    ring = cv2.dilate(region_mask.astype(np.uint8), np.ones((2 * RING + 1, 2 * RING + 1), np.uint8)).astype(bool)
    ring &= ~region_mask
    if not ring.any():
        return np.zeros_like(detail)
    around = detail[ring][:: max(1, int(ring.sum()) // GRAIN_SAMPLES)]  # a robust spread needs a few thousand
    strength = 1.4826 * np.median(np.abs(around - np.median(around, axis=0)), axis=0)  # robust to edges
    # Uniform noise of the same spread: as grain it looks the same as Gaussian, and draws three times faster.
    unit = rng.random(detail.shape, dtype=np.float32) - np.float32(0.5)
    return unit * (np.sqrt(12.0) * strength).astype(np.float32)


def _with_margin(box: Box, shape: tuple[int, ...], margin: int) -> Box:
    left, top, right, bottom = box
    return max(0, left - margin), max(0, top - margin), min(shape[1], right + margin), min(shape[0], bottom + margin)
