"""fashion_strength on FLUX.2 [klein]: how much of the object's own texture and colour is put back over what
the model drew where the object lies.

The model sees the object twice, as the placed pixels it starts from and as the reference image in its
attention; it re-draws light, contact and edges, and on the way it softens fine print, weave and lettering and
drifts colours toward the scene. There is no adapter scale to turn here (the reference is plain attention),
so fashion_strength acts on the result: over the object's coverage, the placed pixels' fine detail (the band
below DETAIL_SHARE of the crop's side) replaces the model's by fashion x subject, and the object's mean colour
is pulled back to the placed one by the same share. The model's shading (the broad band) is always kept. At
fashion 0 the model's drawing stands; at subject 0 nothing is put back either, because the model then
repaints fully and the placed pixels no longer line up with what it drew.
"""

from __future__ import annotations

import cv2
import numpy as np

DETAIL_SHARE = 0.01  # detail is what a Gaussian of this share of the crop's longer side removes
MAX_GAIN = 1.5  # colour pull-back per channel is bounded: a reflection is not a colour error
MIN_CORE_PIXELS = 16


def keep_own_look(generated: np.ndarray, placed: np.ndarray, coverage: np.ndarray, amount: float) -> np.ndarray:
    """`generated` (float RGB) with `amount` (0..1) of `placed`'s fine detail and mean colour over `coverage`."""
    if amount <= 0 or not (coverage > 0).any():
        return generated
    sigma = max(1.0, DETAIL_SHARE * max(generated.shape[:2]))
    weight = (amount * np.clip(coverage, 0.0, 1.0))[..., None]
    out = generated + weight * (_detail(placed, sigma) - _detail(generated, sigma))
    core = coverage > 0.5
    if core.sum() >= MIN_CORE_PIXELS:
        gain = (placed[core].mean(axis=0) + 1.0) / (generated[core].mean(axis=0) + 1.0)
        out = out * (1.0 + weight * (np.clip(gain, 1 / MAX_GAIN, MAX_GAIN) - 1.0))
    return np.clip(out, 0.0, 255.0)


def _detail(image: np.ndarray, sigma: float) -> np.ndarray:
    return image - cv2.GaussianBlur(image, (0, 0), sigma)
