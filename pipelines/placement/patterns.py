"""Pattern mode: the tiled pattern covers the grown mask, shaded by the original's light so folds survive.

`horizontal_repeat` x `vertical_repeat` set the tile size across the mask's box: the tile keeps its aspect and is
scaled so that the repeats cover the box in both directions (never letterboxed; in the direction the aspect
leaves over, part of the last tile is cut). The pattern is then multiplied by the original's low-frequency
luminance relative to its median inside the mask: its folds and light.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from pipelines.imageops import Box
from pipelines.placement.colour import harmonise

# A shading factor is kept within this range: below it, the deepest creases turn black; above it, highlights
# would burn out. Inside it, brighter inclusions (a badge, a collar inside the mask) stay brighter, as light would.
SHADE_RANGE = (0.2, 2.5)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def place_pattern(
    scene: np.ndarray,
    grown: np.ndarray,
    box: Box,
    pattern: Image.Image,
    horizontal: int,
    vertical: int,
    fashion_strength: float,
) -> np.ndarray:
    """The scene (float RGB) with the grown mask covered by the shaded, tiled pattern."""
    left, top, right, bottom = box
    region, region_mask = scene[top:bottom, left:right], grown[top:bottom, left:right]
    tiled = tile_over(pattern, (right - left, bottom - top), horizontal, vertical)
    tiled = harmonise(
        tiled, np.ones(tiled.shape[:2], np.float32), region[region_mask], fashion_strength, light_match=0.0
    )
    shaded = apply_shading(tiled, shading(region, region_mask))
    out = scene.copy()
    out[top:bottom, left:right] = np.where(region_mask[..., None], np.clip(shaded, 0.0, 255.0), region)
    return out


def tile_over(pattern: Image.Image, size: tuple[int, int], horizontal: int, vertical: int) -> np.ndarray:
    """The pattern repeated over `size` (width, height): float RGB."""
    width, height = size
    tile = pattern.convert("RGB")
    scale = max(width / (horizontal * tile.width), height / (vertical * tile.height))
    tile_size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
    tile_pixels = np.asarray(tile.resize(tile_size, Image.Resampling.LANCZOS), dtype=np.float32)
    reps = (-(-height // tile_size[1]), -(-width // tile_size[0]), 1)
    return np.tile(tile_pixels, reps)[:height, :width]


def apply_shading(pattern: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Darken by multiplying where the shade is below 1; lighten towards white above it, keeping the hue
    (a per-channel multiply would clip the brightest channel first and shift the colour)."""
    shade = shade[..., None]
    return np.where(shade <= 1.0, pattern * shade, 255.0 - (255.0 - pattern) / shade)


def shading(region: np.ndarray, region_mask: np.ndarray) -> np.ndarray:
    """The original's luminance inside the mask, smoothed (only mask pixels count), over its median there.

    The median is the fabric's own brightness under typical light, so the light and the folds come out as
    factors around 1 whatever the garment's colour, and a few bright inclusions do not darken the rest.
    """
    height, width = region_mask.shape
    sigma = max(1.5, min(height, width) / 120)
    weight = region_mask.astype(np.float32)
    luminance = region @ LUMA
    smooth = cv2.GaussianBlur(luminance * weight, (0, 0), sigma) / np.maximum(
        cv2.GaussianBlur(weight, (0, 0), sigma), 1e-3
    )
    typical = float(np.median(smooth[region_mask])) if region_mask.any() else 1.0
    return np.clip(smooth / max(typical, 1.0), *SHADE_RANGE)
