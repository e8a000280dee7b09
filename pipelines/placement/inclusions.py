"""Inclusions in a garment: small patches far brighter or darker than the fabric around them (a badge, a name tag,
a medal ribbon). The pattern's shading is the garment's light, and an inclusion is not light: followed, it would
print the badge as a pale patch of the pattern. There the shading is clamped to the surrounding fabric's, so the
pattern continues through it; folds and the large-scale light stay as they were.

The fabric's shading is the median of the shading over a window a good share of the mask's size (an inclusion
covers less than half of it, so the median is the fabric's). An inclusion is a connected patch beyond BRIGHTER or
DARKER of that, small relative to the mask, and enclosed by it (a patch at the mask's border is the garment's
edge against another surface). A fold's shadow darkens the fabric, but less than DARKER; fabric rarely shines
beyond BRIGHTER, so the bounds are not symmetric.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

WINDOW_SHARE = 0.4  # the fabric's median is taken over a window of this share of the mask's side (its area's root)
SMALL_SHARE = 0.05  # an inclusion covers at most this share of the mask
BRIGHTER = 1.6  # a patch this many times as bright as the fabric around it is an inclusion
DARKER = 0.25  # and so is one this dark or darker (the suite's suit has fold shadows at 0.28 of the fabric)
HALO = 1.1  # the shading's blur spreads an inclusion: next to it, pixels this far out of line are part of it
EDGE = 2  # pixels: a patch this close to the mask's border is not enclosed
WORK_SIDE = 192  # the fabric's median is computed at this long side (the shading is smooth)
FEATHER = 1.0  # the clamp fades in over a blur of this sigma
LEVELS = 255  # the median works on 8-bit levels of the log shading


def clamp_inclusions(shade: np.ndarray, mask: np.ndarray, spread: float) -> np.ndarray:
    """`shade` (the garment's shading factors) with each inclusion inside `mask` set to the fabric's around it;
    `spread` is the shading's blur sigma (how far an inclusion's edge reaches into the fabric)."""
    if mask.sum() < 4:
        return shade
    logs = np.log(shade)
    fabric = _fabric(logs, mask)
    deviation = logs - fabric
    strong = mask & ((deviation > math.log(BRIGHTER)) | (deviation < math.log(DARKER)))
    inclusions = _small_and_enclosed(strong, mask)
    if not inclusions.any():
        return shade
    reach = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * math.ceil(2 * spread) + 1,) * 2)
    near = cv2.dilate(inclusions.astype(np.uint8), reach).astype(bool)
    inclusions |= near & (np.abs(deviation) > math.log(HALO))
    fabric = _fabric(logs, mask & ~near)  # again without them: an inclusion pulls the median its way
    weight = cv2.GaussianBlur(inclusions.astype(np.float32), (0, 0), FEATHER)
    return np.exp(logs + weight * (fabric - logs))


def _fabric(logs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The median of the log shading around each pixel over the mask (outside it, each pixel takes the nearest
    mask pixel's value, so the scene around does not count), at a working size."""
    height, width = mask.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(logs, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    if small_mask.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~small_mask, return_indices=True)
        small = small[rows, cols]
    low, high = float(small.min()), float(small.max())
    step = max(high - low, 1e-6) / LEVELS
    levels = np.rint((small - low) / step).astype(np.uint8)
    window = max(3, round(WINDOW_SHARE * math.sqrt(mask.sum()) * scale)) | 1
    median = cv2.medianBlur(levels, window).astype(np.float32) * step + low
    return cv2.resize(median, (width, height), interpolation=cv2.INTER_LINEAR)


def _small_and_enclosed(strong: np.ndarray, mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(strong)
    if count == 0:
        return strong
    sizes = ndimage.sum(strong, labels, index=np.arange(1, count + 1))
    keep = np.zeros(count + 1, bool)
    keep[1:] = sizes <= SMALL_SHARE * mask.sum()
    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * EDGE + 1,) * 2, np.uint8), borderValue=0)
    border = mask & ~inner.astype(bool)
    keep[np.unique(labels[border])] = False
    keep[0] = False
    return keep[labels]
