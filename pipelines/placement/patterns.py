"""Pattern mode: the tiled pattern covers the grown mask, shaded by the original's light so folds survive.

`horizontal_repeat` x `vertical_repeat` are counts, as the contract says: the grown mask's box holds exactly
`horizontal` tiles across and `vertical` down, each the whole pattern resized to box_w / horizontal by
box_h / vertical (its aspect follows the box's; never letterboxed, never cut). The diffusion engines' reference
images are the same grid (grid_reference). The pattern is then multiplied by the original's low-frequency
luminance relative to its median inside the mask: its folds and light (not its badges: see inclusions).
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
from PIL import Image

from pipelines.imageops import LUMA, Box
from pipelines.placement.colour import transfer
from pipelines.placement.inclusions import clamp_inclusions

# A shading factor is kept within this range: below it, the deepest creases turn black; above it, highlights
# would burn out. Small inclusions (a badge, a name tag) are then clamped to the fabric around them (inclusions.py).
SHADE_RANGE = (0.2, 2.5)
# The grid as a reference image holds each tile at about the pattern's own pixel count (a small box keeps the
# pattern's detail), up to this many pixels in all: more than any encoder reads (FLUX.2 [klein] 768^2, CLIP 224^2).
GRID_REFERENCE_AREA = 1024 * 1024


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
    """The scene (float RGB) with the grown mask covered by the shaded pattern, `horizontal` x `vertical` tiles.

    The pattern's colour is kept over the caller's `mask`; the ring the mask was grown by lies mostly outside the
    garment, where the light is another surface's, so it does not count toward that colour.
    """
    left, top, right, bottom = box
    region, region_mask = scene[top:bottom, left:right], grown[top:bottom, left:right]
    grid = tile_grid(pattern, (right - left, bottom - top), horizontal, vertical)
    colour = _harmoniser(grid, region[region_mask], fashion_strength)
    tiled = colour(grid)
    core = mask[top:bottom, left:right] if mask[top:bottom, left:right].any() else region_mask
    shade = clamp_inclusions(shading(region, region_mask), core, shading_sigma(region_mask.shape))
    shaded = keep_colour(apply_shading(tiled, shade), tiled.reshape(-1, 3).mean(axis=0), core)
    out = scene.copy()
    out[top:bottom, left:right] = np.where(region_mask[..., None], np.clip(shaded, 0.0, 255.0), region)
    return out


def _harmoniser(grid: np.ndarray, target: np.ndarray, fashion_strength: float):
    """The colour transfer fashion_strength asks for, fitted on the grid of whole tiles (one tile's colours)."""
    reference = grid.reshape(-1, 3)
    mean, std = reference.mean(axis=0), reference.std(axis=0)

    def colour(pixels: np.ndarray) -> np.ndarray:
        return transfer(pixels, mean, std, target, fashion_strength)

    return colour


def tile_grid(pattern: Image.Image, size: tuple[int, int], horizontal: int, vertical: int) -> np.ndarray:
    """`horizontal` x `vertical` tiles over `size` (width, height), each the whole pattern resized to its cell:
    float RGB. Cell edges fall on whole pixels (cell_edges), so cells differ by at most a pixel."""
    width, height = size
    rgb = pattern.convert("RGB")
    out = np.empty((height, width, 3), np.float32)
    tiles: dict[tuple[int, int], np.ndarray] = {}
    for top, bottom in itertools.pairwise(cell_edges(height, vertical)):
        for left, right in itertools.pairwise(cell_edges(width, horizontal)):
            cell = (right - left, bottom - top)
            if min(cell) == 0:  # more tiles than pixels: this one has no room
                continue
            if cell not in tiles:
                tiles[cell] = np.asarray(rgb.resize(cell, Image.Resampling.LANCZOS), dtype=np.float32)
            out[top:bottom, left:right] = tiles[cell]
    return out


def cell_edges(length: int, count: int) -> list[int]:
    """Where `count` cells over `length` pixels start, and the end: floor(i * length / count), as the playground's
    preview draws them."""
    return [i * length // count for i in range(count + 1)]


def grid_reference(pattern: Image.Image, box: Box, horizontal: int, vertical: int) -> Image.Image:
    """The grid a pattern is placed as, for the reference encoders: the same tiles at the box's aspect, each at
    about the pattern's own pixel count, at most GRID_REFERENCE_AREA in all."""
    width, height = box[2] - box[0], box[3] - box[1]
    area = min(GRID_REFERENCE_AREA, horizontal * vertical * pattern.width * pattern.height)
    scale = (area / (width * height)) ** 0.5
    size = (max(horizontal, round(width * scale)), max(vertical, round(height * scale)))
    return Image.fromarray(tile_grid(pattern, size, horizontal, vertical).astype(np.uint8), "RGB")


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
