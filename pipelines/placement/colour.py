"""Colour harmonisation: how much of the object's own colour is kept (fashion_strength) versus the scene's."""

from __future__ import annotations

import numpy as np

# Share of the gap between the object's mean colour and its surroundings' that is always closed, so that even
# at fashion_strength 1 an object takes on a little of the scene's light.
LIGHT_MATCH = 0.1


def harmonise(
    obj: np.ndarray, weight: np.ndarray, target: np.ndarray, fashion_strength: float, light_match: float = LIGHT_MATCH
) -> np.ndarray:
    """Pull `obj`'s colours (float RGB) towards the statistics of `target` pixels (N x 3).

    Per-channel mean/std transfer weighted by `weight` (the object's alpha), applied with (1 - fashion_strength):
    at 1 the object keeps its own colour and texture (only `light_match` of the mean gap is closed), at 0 it takes
    the target's colour statistics.
    """
    w = weight.reshape(-1)
    pixels = obj.reshape(-1, 3)
    total = w.sum()
    if total <= 0 or len(target) == 0:
        return obj
    obj_mean = (pixels * w[:, None]).sum(axis=0) / total
    obj_std = np.sqrt((((pixels - obj_mean) ** 2) * w[:, None]).sum(axis=0) / total) + 1e-3
    target_mean, target_std = target.mean(axis=0), target.std(axis=0) + 1e-3
    transferred = (obj - obj_mean) * (target_std / obj_std) + target_mean
    light_matched = obj + light_match * (target_mean - obj_mean)
    pull = 1.0 - fashion_strength
    return np.clip(light_matched + pull * (transferred - light_matched), 0.0, 255.0)


def match_to(image: np.ndarray, reference: np.ndarray, where: np.ndarray, max_gain: float = 1.25) -> np.ndarray:
    """`image` (float RGB) with per-channel gain and offset that make its pixels under `where` match the
    reference's there (mean and spread; the gain kept within 1/max_gain..max_gain). Unchanged if `where` is empty."""
    if not where.any():
        return image
    ours, theirs = image[where], reference[where]
    gain = np.clip((theirs.std(axis=0) + 1e-3) / (ours.std(axis=0) + 1e-3), 1.0 / max_gain, max_gain)
    return np.clip((image - ours.mean(axis=0)) * gain + theirs.mean(axis=0), 0.0, 255.0)
