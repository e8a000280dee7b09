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

Putting detail back is only right where the model kept the object where it was placed: had it moved or
re-shaped it, the placed edges would land beside the drawn ones (double edges). So the amount is scaled by
how well the two still line up: the correlation of their edge maps (gradient magnitude at a fine scale, where
a shift of a few pixels decorrelates) over the object and a rim around it, nothing below ALIGNED_FROM, all of
it from ALIGNED_AT. It runs on the model's device (device_ops.py): images are (3, H, W) tensors in 0..255.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pipelines.engines.diffusion.device_ops import edge_magnitude, gaussian_blur, plane

DETAIL_SHARE = 0.01  # detail is what a Gaussian of this share of the crop's longer side removes
MAX_GAIN = 1.5  # colour pull-back per channel is bounded: a reflection is not a colour error
MIN_CORE_PIXELS = 16
EDGE_SHARE = 0.002  # edges are gradients after a Gaussian of this share of the longer side (at least 1 px)
ALIGNED_FROM, ALIGNED_AT = 0.3, 0.6  # edge correlation: nothing put back below, all of it above


def keep_own_look(generated: torch.Tensor, placed: torch.Tensor, coverage: np.ndarray, amount: float) -> torch.Tensor:
    """`generated` with `amount` (0..1) of `placed`'s fine detail and mean colour over `coverage` (a 0..1 map at
    the same size), as far as the two are still registered (see `alignment`)."""
    if amount > 0 and (coverage > 0).any():
        amount *= registered_share(alignment(generated, placed, coverage))
    if amount <= 0:
        return generated
    sigma = max(1.0, DETAIL_SHARE * max(generated.shape[-2:]))
    cover = plane(np.clip(coverage, 0.0, 1.0), generated.device)
    weight = amount * cover[None]
    out = generated + weight * (_detail(placed, sigma) - _detail(generated, sigma))
    core = cover > 0.5
    if int(core.sum()) >= MIN_CORE_PIXELS:
        gain = (placed[:, core].mean(dim=1) + 1.0) / (generated[:, core].mean(dim=1) + 1.0)
        out = out * (1.0 + weight * (gain.clamp(1 / MAX_GAIN, MAX_GAIN)[:, None, None] - 1.0))
    return out.clamp(0.0, 255.0)


def registered_share(correlation: float) -> float:
    """The share of the detail put back for an edge correlation: 0 below ALIGNED_FROM, 1 from ALIGNED_AT."""
    return float(np.clip((correlation - ALIGNED_FROM) / (ALIGNED_AT - ALIGNED_FROM), 0.0, 1.0))


def alignment(generated: torch.Tensor, placed: torch.Tensor, coverage: np.ndarray) -> float:
    """The correlation of the two images' edge maps over the object and a rim around it (-1..1; 0 where
    either has no edges there)."""
    sigma = max(1.0, EDGE_SHARE * max(generated.shape[-2:]))
    rim = max(1, round(3 * sigma))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1))
    region = plane(cv2.dilate((coverage > 0.5).astype(np.uint8), kernel), generated.device) > 0.5
    first, second = edge_magnitude(generated, sigma)[region], edge_magnitude(placed, sigma)[region]
    if first.numel() < MIN_CORE_PIXELS or float(first.std()) == 0 or float(second.std()) == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([first, second]))[0, 1])


def _detail(image: torch.Tensor, sigma: float) -> torch.Tensor:
    return image - gaussian_blur(image, sigma)
