"""Pattern mode: the tiled pattern covers the grown mask, shaded by the original's light so folds survive.

`horizontal_repeat` x `vertical_repeat` set the tile size across the mask's box: the tile keeps its aspect and is
scaled so that the repeats cover the box in both directions (never letterboxed; in the direction the aspect
leaves over, part of the last tile is cut). The pattern is then multiplied by the original's low-frequency
luminance relative to its median inside the mask: its folds and light (not its badges: see inclusions).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from pipelines.imageops import LUMA, Box
from pipelines.placement.colour import transfer
from pipelines.placement.inclusions import clamp_inclusions

# A shading factor is kept within this range: below it, the deepest creases turn black; above it, highlights
# would burn out. Small inclusions (a badge, a name tag) are then clamped to the fabric around them (inclusions.py).
SHADE_RANGE = (0.2, 2.5)


def place_pattern(
    scene: np.ndarray,
    mask: np.ndarray,
    grown: np.ndarray,
    box: Box,
    pattern: Image.Image,
    horizontal: int,
    vertical: int,
    fashion_strength: float,
) -> np.ndarray:
    """The scene (float RGB) with the grown mask covered by the shaded, tiled pattern.

    The pattern's colour is kept over the caller's `mask`; the ring the mask was grown by lies mostly outside the
    garment, where the light is another surface's, so it does not count toward that colour.
    """
    left, top, right, bottom = box
    region, region_mask = scene[top:bottom, left:right], grown[top:bottom, left:right]
    tile = scaled_tile(pattern, (right - left, bottom - top), horizontal, vertical)
    colour = _harmoniser(tile, region[region_mask], fashion_strength)
    tiled = colour(repeat(tile, (right - left, bottom - top)))
    core = mask[top:bottom, left:right] if mask[top:bottom, left:right].any() else region_mask
    shade = clamp_inclusions(shading(region, region_mask), core, shading_sigma(region_mask.shape))
    shaded = keep_colour(apply_shading(tiled, shade), colour(tile).reshape(-1, 3).mean(axis=0), core)
    out = scene.copy()
    out[top:bottom, left:right] = np.where(region_mask[..., None], np.clip(shaded, 0.0, 255.0), region)
    return out


def _harmoniser(tile: np.ndarray, target: np.ndarray, fashion_strength: float):
    """The colour transfer fashion_strength asks for, fitted on one tile, to apply to the tile and the tiling."""
    reference = tile.reshape(-1, 3)
    mean, std = reference.mean(axis=0), reference.std(axis=0)

    def colour(pixels: np.ndarray) -> np.ndarray:
        return transfer(pixels, mean, std, target, fashion_strength)

    return colour


def scaled_tile(pattern: Image.Image, size: tuple[int, int], horizontal: int, vertical: int) -> np.ndarray:
    """One tile, aspect kept, at the scale where the repeats cover `size` (width, height) both ways: float RGB."""
    width, height = size
    tile = pattern.convert("RGB")
    scale = max(width / (horizontal * tile.width), height / (vertical * tile.height))
    tile_size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
    return np.asarray(tile.resize(tile_size, Image.Resampling.LANCZOS), dtype=np.float32)


def repeat(tile: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The tile repeated over `size` (width, height), from the top-left corner."""
    width, height = size
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return np.tile(tile, reps)[:height, :width]


def tile_over(pattern: Image.Image, size: tuple[int, int], horizontal: int, vertical: int) -> np.ndarray:
    """The pattern repeated over `size` (width, height): float RGB."""
    return repeat(scaled_tile(pattern, size, horizontal, vertical), size)


def apply_shading(pattern: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Darken by multiplying where the shade is below 1; lighten towards white above it, keeping the hue
    (a per-channel multiply would clip the brightest channel first and shift the colour)."""
    shade = shade[..., None]
    return np.where(shade <= 1.0, pattern * shade, 255.0 - (255.0 - pattern) / shade)


def keep_colour(shaded: np.ndarray, colour: np.ndarray, mask: np.ndarray, rounds: int = 3) -> np.ndarray:
    """One gain per channel over the whole region so that its mean colour in the mask is the pattern's `colour`.

    Shading around a median darkens a region with large shadows (a glossy or deeply folded surface), highlights
    lift it toward white, and a thin mask may sample only the dark part of a large tile: the light and folds
    should move the pattern's colour around, not shift it overall, since the pattern's own colour is what
    fashion_strength keeps. Gains leave the shading's shape (and its correlation with the original) as it is;
    a few rounds account for what clips.
    """
    if not mask.any():
        return shaded
    out = shaded
    for _ in range(rounds):
        current = out[mask].mean(axis=0)
        if np.all(np.abs(current - colour) < 0.5):
            break
        out = np.clip(out * (colour / np.maximum(current, 1.0)), 0.0, 255.0)
    return out


def shading(region: np.ndarray, region_mask: np.ndarray) -> np.ndarray:
    """The original's luminance inside the mask, smoothed (only mask pixels count), over its median there.

    The median is the fabric's own brightness under typical light, so the light and the folds come out as
    factors around 1 whatever the garment's colour, and a few bright inclusions do not darken the rest.
    """
    sigma = shading_sigma(region_mask.shape)
    weight = region_mask.astype(np.float32)
    luminance = region @ LUMA
    smooth = cv2.GaussianBlur(luminance * weight, (0, 0), sigma) / np.maximum(
        cv2.GaussianBlur(weight, (0, 0), sigma), 1e-3
    )
    typical = float(np.median(smooth[region_mask])) if region_mask.any() else 1.0
    return np.clip(smooth / max(typical, 1.0), *SHADE_RANGE)


def shading_sigma(shape: tuple[int, int]) -> float:
    """The blur the shading is taken at: fine enough for folds, coarse enough to drop the fabric's weave."""
    return max(1.5, min(shape) / 120)
