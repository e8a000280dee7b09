"""Where the model works: a crop around the grown mask at the model's native area, and the masks at that size."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from pipelines.imageops import Box, mask_box

CONTEXT_SHARE = 0.25  # context kept around the grown mask, as a share of its box's longer side
MIN_CONTEXT = 16
MAX_ASPECT = 2.0  # boxes more elongated than this take more context on their short side
# The shapes crops are processed at, for a 1024 native side (scaled for others): SDXL's multi-aspect training
# resolutions from 1:2.4 to 2.4:1 (Podell et al. 2023), all within FLUX.2's 1 MP too. A compiled model then
# sees nine shapes, not one per box aspect.
BUCKETS = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)
BUCKET_TOLERANCE = 0.01  # a box whose aspect reaches its bucket's within 1 % takes the bucket's size


def context_box(grown: np.ndarray, size: tuple[int, int]) -> Box:
    """A box around the grown mask with context, widened on its short side if it is too elongated."""
    return with_context(mask_box(grown), size)


def with_context(box: Box, size: tuple[int, int]) -> Box:
    """`box` with context around it, widened on its short side if too elongated, within an image of `size`."""
    left, top, right, bottom = box
    margin = max(MIN_CONTEXT, round(CONTEXT_SHARE * max(right - left, bottom - top)))
    left, top, right, bottom = left - margin, top - margin, right + margin, bottom + margin
    width, height = right - left, bottom - top
    if width > MAX_ASPECT * height:
        extra = math.ceil(width / MAX_ASPECT - height) // 2 + 1
        top, bottom = top - extra, bottom + extra
    elif height > MAX_ASPECT * width:
        extra = math.ceil(height / MAX_ASPECT - width) // 2 + 1
        left, right = left - extra, right + extra
    return max(0, left), max(0, top), min(size[0], right), min(size[1], bottom)


def crop_geometry(
    box: Box, image_size: tuple[int, int], native_side: int, multiple: int = 8, max_area: int | None = None
) -> tuple[Box, tuple[int, int]]:
    """Where the model works for a context `box` in an image of `image_size`: the box widened to the nearest
    bucket's aspect (more context on its short side) and the bucket's size; or, where the image has no room
    for that (a strip along its edge), the box as it is at processing_size."""
    bucket = nearest_bucket(box, native_side, multiple, max_area)
    fitted = fit_aspect(box, bucket[0] / bucket[1], image_size)
    width, height = fitted[2] - fitted[0], fitted[3] - fitted[1]
    if abs(math.log(width / height) - math.log(bucket[0] / bucket[1])) <= BUCKET_TOLERANCE:
        return fitted, bucket
    return box, processing_size(box, native_side, multiple, max_area)


def nearest_bucket(box: Box, native_side: int, multiple: int, max_area: int | None = None) -> tuple[int, int]:
    """The bucket nearest the box's aspect (in log), scaled to `native_side` in whole `multiple`s."""
    aspect = math.log((box[2] - box[0]) / (box[3] - box[1]))
    width, height = min(BUCKETS, key=lambda size: abs(math.log(size[0] / size[1]) - aspect))
    scale = native_side / 1024
    sides = [max(multiple, round(side * scale / multiple) * multiple) for side in (width, height)]
    if max_area is not None and sides[0] * sides[1] > max_area:
        sides = [max(multiple, math.floor(side * scale / multiple) * multiple) for side in (width, height)]
    return sides[0], sides[1]


def fit_aspect(box: Box, aspect: float, image_size: tuple[int, int]) -> Box:
    """`box` grown on its short side to `aspect` (width / height), centred, moved inside the image where it
    crosses an edge, and cut at the image's edges where the image is too small."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    if width / height < aspect:
        left, right = _grown_span(left, right, round(height * aspect), image_size[0])
    else:
        top, bottom = _grown_span(top, bottom, round(width / aspect), image_size[1])
    return left, top, right, bottom


def _grown_span(low: int, high: int, length: int, limit: int) -> tuple[int, int]:
    low -= (length - (high - low)) // 2
    low = max(0, min(low, limit - length))
    return low, min(limit, low + length)


def processing_size(box: Box, native_side: int, multiple: int = 8, max_area: int | None = None) -> tuple[int, int]:
    """Width and height with the area of native_side^2, the box's aspect, sides multiples of `multiple`
    (a latent cell: 8 pixels for SD, 16 for FLUX.2's 2x2-packed latents).

    The long side is capped at twice the native side for boxes that stayed elongated against the image
    border. With `max_area` (a pipeline that shrinks anything larger), the sides are rounded down instead
    of to the nearest cell whenever rounding would pass it.
    """
    width, height = box[2] - box[0], box[3] - box[1]
    scale = native_side / math.sqrt(width * height)
    scale = min(scale, 2 * native_side / max(width, height))
    sides = [max(multiple, round(side * scale / multiple) * multiple) for side in (width, height)]
    if max_area is not None and sides[0] * sides[1] > max_area:
        sides = [max(multiple, math.floor(side * scale / multiple) * multiple) for side in (width, height)]
    return sides[0], sides[1]


def crop_mask(mask: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The mask inside `box`, scaled to `size` (nearest: no grey edge)."""
    left, top, right, bottom = box
    crop = Image.fromarray(mask[top:bottom, left:right])
    return np.asarray(crop.resize(size, Image.Resampling.NEAREST), dtype=bool)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grown by a disk of `radius` pixels."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def whole_cells(mask: np.ndarray, cell: int) -> np.ndarray:
    """Every `cell` x `cell` block (from the top-left) that `mask` touches, filled: a mask the model's latent
    grid holds exactly, with no half-covered cell along its edge."""
    height, width = mask.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=bool)
    padded[:height, :width] = mask
    touched = padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))
    return np.repeat(np.repeat(touched, cell, axis=0), cell, axis=1)[:height, :width]
