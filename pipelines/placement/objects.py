"""Object mode: the cut-out fitted bottom-centre into the grown mask, over the emptied region, with a contact shadow.

Objects stand on things, so the cut-out keeps its aspect and sits at the bottom of the mask's box, centred; if
part of it would fall outside the mask's shape it is moved up and shrunk until it does not. Its colour is
harmonised with the surroundings; its edge is its soft matte, with the colours of the old backdrop taken out
(see cutout.defringe) and the matte tightened where a band of that backdrop survives (see fringe). A Poisson
(seamless) clone was not used: it pulls the object's own colours toward the scene's, which is fashion_strength's
job; a two-band blend was tried and left a glow around bright objects.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from pipelines.imageops import Box
from pipelines.placement.colour import harmonise
from pipelines.placement.fill import remove_content
from pipelines.placement.fringe import tighten_matte

OUTSIDE_ALLOWED = 0.03  # share of the object's alpha that may fall outside the grown mask (then clipped)
SEARCH_SIDE = 64  # the fit is searched at this long side, then applied at full size
SHADOW_DARKEN = 0.45  # how much the contact shadow darkens the ground at its centre
OPAQUE = 0.99
HIDDEN_MARGIN = 8  # px inside the object's opaque edge still filled (the matte may be tightened up to 6 px)


def place_object(
    scene: np.ndarray, grown: np.ndarray, box: Box, cutout: Image.Image, fashion_strength: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The scene (float RGB) with the mask's old content removed and `cutout` (RGBA) placed in it, and the
    object's alpha over the mask's box."""
    left, top, right, bottom = box
    region_mask = grown[top:bottom, left:right]
    layer, alpha = fit_into(cutout, region_mask)
    filled = remove_content(scene, grown & ~_hidden(alpha, box, grown.shape), box, seed, exclude=grown)
    layer = harmonise(layer, alpha, _surroundings(scene, grown, box), fashion_strength)
    region = filled[top:bottom, left:right]
    region = region * (1.0 - SHADOW_DARKEN * contact_shadow(alpha) * (1.0 - alpha))[..., None]
    alpha = tighten_matte(layer, alpha, region)
    out = filled.copy()
    out[top:bottom, left:right] = region + alpha[..., None] * (layer - region)
    return out, alpha


def _hidden(alpha: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Where the object will hide the scene: its opaque inside, short of the band its matte may still lose
    (fringe.py). No fill is needed there, and the old content it still holds is no source for one."""
    left, top, right, bottom = box
    opaque = cv2.erode((alpha >= OPAQUE).astype(np.uint8), np.ones((2 * HIDDEN_MARGIN + 1,) * 2, np.uint8))
    hidden = np.zeros(shape, bool)
    hidden[top:bottom, left:right] = opaque > 0
    return hidden


def fit_into(cutout: Image.Image, region_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out drawn into a layer the size of the mask's box: RGB (float) and alpha in [0, 1]."""
    height, width = region_mask.shape
    scale, x, y = _best_fit(cutout, region_mask)
    size = (max(1, round(cutout.width * scale)), max(1, round(cutout.height * scale)))
    resized = cutout.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    canvas.paste(resized, (round(x), round(y)))
    rgba = np.asarray(canvas, dtype=np.float32)
    return rgba[..., :3], rgba[..., 3] / 255.0


def _best_fit(cutout: Image.Image, region_mask: np.ndarray) -> tuple[float, float, float]:
    """Scale and top-left of the largest placement, lowest first, with at most OUTSIDE_ALLOWED of the object's
    alpha outside the mask (searched at a small size: a handful of scales and every row)."""
    height, width = region_mask.shape
    shrink = min(1.0, SEARCH_SIDE / max(height, width))
    small_size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    small = cv2.resize(region_mask.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
    full_scale = min(width / cutout.width, height / cutout.height)
    for factor in np.linspace(1.0, 0.4, 13):
        scale = full_scale * factor
        w, h = max(1, round(cutout.width * scale * shrink)), max(1, round(cutout.height * scale * shrink))
        alpha = np.asarray(cutout.getchannel("A").resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
        total = max(alpha.sum(), 1e-6)
        x = (small.shape[1] - w) // 2
        for y in range(small.shape[0] - h, -1, -1):
            outside = (alpha * (1.0 - small[y : y + h, x : x + w])).sum() / total
            if outside <= OUTSIDE_ALLOWED:
                return scale, (width - cutout.width * scale) / 2, y / shrink
    scale = full_scale * 0.4
    return scale, (width - cutout.width * scale) / 2, height - cutout.height * scale


def contact_shadow(alpha: np.ndarray) -> np.ndarray:
    """A soft ellipse in [0, 1] under the object's lowest opaque rows, where it touches the ground."""
    rows = np.flatnonzero(alpha.max(axis=1) > 0.5)
    if len(rows) == 0:
        return np.zeros_like(alpha)
    top, bottom = rows[0], rows[-1]
    foot = alpha[max(top, bottom - max(1, (bottom - top) // 10)) : bottom + 1] > 0.5
    cols = np.flatnonzero(foot.any(axis=0))
    centre_x, half_width = (cols[0] + cols[-1]) / 2, max(2.0, 0.6 * (cols[-1] - cols[0] + 1))
    half_height = max(1.5, 0.04 * (bottom - top + 1))
    shadow = np.zeros_like(alpha)
    sigma = max(1.0, half_height)
    # Drawn and blurred only in the window the blur can reach: the ellipse and OpenCV's kernel radius (4 sigma).
    reach = 4 * sigma + 1
    y0, y1 = max(0, int(bottom - half_height - reach)), min(alpha.shape[0], int(bottom + half_height + reach) + 2)
    x0, x1 = max(0, int(centre_x - half_width - reach)), min(alpha.shape[1], int(centre_x + half_width + reach) + 2)
    window = shadow[y0:y1, x0:x1]
    cv2.ellipse(
        window, (round(centre_x) - x0, int(bottom) - y0), (round(half_width), round(half_height)), 0, 0, 360, 1.0, -1
    )
    shadow[y0:y1, x0:x1] = cv2.GaussianBlur(window, (0, 0), sigma)
    return shadow


def _surroundings(scene: np.ndarray, grown: np.ndarray, box: Box) -> np.ndarray:
    """Scene pixels around the region: the box's pixels outside the grown mask, else the whole image."""
    left, top, right, bottom = box
    ring = scene[top:bottom, left:right][~grown[top:bottom, left:right]]
    return ring if len(ring) else scene.reshape(-1, 3)
