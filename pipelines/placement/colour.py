"""Colour harmonisation: how much of the object's own colour is kept (fashion_strength) versus the scene's."""

from __future__ import annotations

import numpy as np

# Share of the gap between the object's mean colour and its surroundings' that is always closed, so that even
# at fashion_strength 1 an object takes on a little of the scene's light.
LIGHT_MATCH = 0.1
STAT_SAMPLES = 65536


def harmonise(
    obj: np.ndarray, weight: np.ndarray, target: np.ndarray, fashion_strength: float, light_match: float = LIGHT_MATCH
) -> np.ndarray:
    """Pull `obj`'s colours (float RGB) towards the statistics of `target` pixels (N x 3).

    Per-channel mean/std transfer, the object's statistics weighted by `weight` (its alpha); see `transfer`.
    """
    step = max(1, weight.size // STAT_SAMPLES)  # a mean and a spread need far fewer pixels than a layer holds
    w = weight.reshape(-1)[::step]
    pixels = obj.reshape(-1, 3)[::step]
    total = w.sum()
    if total <= 0 or len(target) == 0:
        return obj
    mean = (w @ pixels) / total
    std = np.sqrt((w @ (pixels - mean) ** 2) / total)
    return transfer(obj, mean, std, target, fashion_strength, light_match)


def transfer(
    pixels: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    target: np.ndarray,
    fashion_strength: float,
    light_match: float = 0.0,
) -> np.ndarray:
    """Colours of mean `mean` and spread `std` moved toward `target`'s, with weight (1 - fashion_strength).

    At fashion_strength 1 the colours are kept (but for `light_match` of the gap between the means); at 0 they
    take the target's mean and spread per channel.
    """
    target = target[:: max(1, len(target) // STAT_SAMPLES)]
    target_mean, target_std = target.mean(axis=0), target.std(axis=0) + 1e-3
    # Both ends are per-channel affine maps of the pixels, so their blend is one: pixels * gain + offset.
    transfer_gain = target_std / (std + 1e-3)
    transfer_offset = target_mean - mean * transfer_gain
    light_offset = light_match * (target_mean - mean)
    gain = 1.0 + (1.0 - fashion_strength) * (transfer_gain - 1.0)
    offset = light_offset + (1.0 - fashion_strength) * (transfer_offset - light_offset)
    return np.clip(pixels * gain.astype(np.float32) + offset.astype(np.float32), 0.0, 255.0)
