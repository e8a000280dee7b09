"""Image operations shared by every engine: plain functions on arrays and PIL images.

Masks are boolean numpy arrays of shape (height, width) in main-image pixels;
boxes are (left, top, right, bottom) with right/bottom exclusive, as in PIL.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
from PIL import Image

from pipelines.errors import InvalidInput

Box = tuple[int, int, int, int]

MASK_THRESHOLD = 128
VISIBLE_ALPHA = 8  # an alpha at or below this shows nothing: a cut-out is trimmed to what is above it
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 luma weights of R, G, B
ASPECT_TOLERANCE = 0.01


def normalize_mask(mask: Image.Image, size: tuple[int, int], threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Any-mode mask image -> boolean array at `size` (width, height); True = replace.

    An alpha channel that is not fully opaque carries the mask (opaque = replace);
    otherwise the luminance does (white = replace). A mask of another size with the same aspect
    ratio is scaled, nearest-neighbour so that no grey edge appears and the threshold means the
    same at every size; any other size is an InvalidInput naming both sizes.
    """
    gray = _mask_channel(mask)
    if gray.size != size:
        _require_same_aspect(gray.size, size)
        gray = gray.resize(size, Image.Resampling.NEAREST)
    return np.asarray(gray) >= threshold


def _require_same_aspect(mask_size: tuple[int, int], size: tuple[int, int]) -> None:
    """A mask of another size is scaled only when its aspect ratio is the main image's (within 1 %)."""
    scale_x, scale_y = size[0] / mask_size[0], size[1] / mask_size[1]
    if abs(scale_x - scale_y) > ASPECT_TOLERANCE * max(scale_x, scale_y):
        raise InvalidInput(
            f"the mask is {mask_size[0]}x{mask_size[1]} and the main image {size[0]}x{size[1]}: "
            "the mask must have the main image's size or its aspect ratio",
            "mask_image",
        )


def _mask_channel(mask: Image.Image) -> Image.Image:
    if mask.mode == "P":
        mask = mask.convert("RGBA" if "transparency" in mask.info else "RGB")
    if is_high_depth(mask):
        return high_depth_to_l(mask)
    if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = mask.getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return mask.convert("L")


def is_high_depth(image: Image.Image) -> bool:
    """16-bit or 32-bit single-channel images (16-bit PNG masks, float TIFF-like data)."""
    return image.mode.startswith("I") or image.mode == "F"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image as 8-bit RGB; 16/32-bit grey scaled by its range first (Pillow's convert would clip it)."""
    return (high_depth_to_l(image) if is_high_depth(image) else image).convert("RGB")


def high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit grey image to 8 bits by its nominal range, not by clipping at 255."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
    if image.mode == "F" and values.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def grow_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate by a disk of exactly `radius` pixels (Euclidean: dx^2 + dy^2 <= r^2)."""
    if radius < 0:
        raise InvalidInput("must be 0 or more", "growmask")
    if radius == 0 or not mask.any():
        return mask.copy()
    top, left, bottom, right = _bounds(mask)
    h, w = mask.shape
    y0, x0 = max(0, top - radius), max(0, left - radius)
    y1, x1 = min(h, bottom + radius), min(w, right + radius)
    distance_to_mask = euclidean_distance(~mask[y0:y1, x0:x1])
    grown = np.zeros_like(mask)
    grown[y0:y1, x0:x1] = distance_to_mask <= radius
    return grown


def euclidean_distance(region: np.ndarray) -> np.ndarray:
    """Each True pixel's exact Euclidean distance to the nearest False one (0 on False pixels), float32.

    OpenCV's exact transform (DIST_MASK_PRECISE), several times faster than scipy's on large masks. With no
    False pixel at all every distance is huge: the array's own border is not an edge."""
    return cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def mask_box(mask: np.ndarray, margin: int = 0) -> Box:
    """Bounding box of the True pixels, widened by `margin` and clamped to the image."""
    if not mask.any():
        raise InvalidInput("the mask selects no pixel: paint the region to replace in white", "mask_image")
    top, left, bottom, right = _bounds(mask)
    h, w = mask.shape
    return max(0, left - margin), max(0, top - margin), min(w, right + margin), min(h, bottom + margin)


def fit_centered(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, Box]:
    """Scale `image` to fit inside `size` keeping its aspect ratio; return it and its box, centred."""
    width, height = size
    scale = min(width / image.width, height / image.height)
    fitted_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    fitted = image.resize(fitted_size, Image.Resampling.LANCZOS)
    left = (width - fitted.width) // 2
    top = (height - fitted.height) // 2
    return fitted, (left, top, left + fitted.width, top + fitted.height)


def feather_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
    """Opacity in [0, 1]: 0 outside `mask`, rising over `feather` pixels inside it to 1."""
    if feather <= 1:
        return mask.astype(np.float32)
    inside_distance = euclidean_distance(mask)
    return np.clip(inside_distance / feather, 0.0, 1.0).astype(np.float32)


def feathered_paste(base: Image.Image, patch: Image.Image, box: Box, mask: np.ndarray, feather: float) -> Image.Image:
    """Paste `patch` (the content of `box`) into `base` inside `mask` with a soft edge.

    Pixels outside `mask` are copied from `base` untouched, so they stay byte-identical.
    """
    left, top, right, bottom = box
    if patch.size != (right - left, bottom - top):
        raise ValueError(f"patch size {patch.size} does not match box {box}")
    alpha = paste_opacity(mask, box, feather)
    opacity = Image.fromarray(np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    out = base.convert("RGB") if base.mode != "RGB" else base.copy()
    out.paste(patch.convert("RGB"), (left, top), opacity)  # Pillow's blend: 0 leaves the base's pixel as it is
    return out


def paste_opacity(mask: np.ndarray, box: Box, feather: float) -> np.ndarray:
    """A feathered paste's opacity inside `box` (0..1): 0 outside `mask`, rising over `feather` px inside."""
    left, top, right, bottom = box
    return _box_alpha(mask, box, feather) * mask[top:bottom, left:right]


def _box_alpha(mask: np.ndarray, box: Box, feather: float) -> np.ndarray:
    """feather_alpha of `mask` inside `box`, seeing one pixel beyond the box.

    Without that pixel a mask that touches the box edge would look like it ran on
    past it; the image's own border is not an edge (it stays opaque).
    """
    left, top, right, bottom = box
    h, w = mask.shape
    y0, x0, y1, x1 = max(0, top - 1), max(0, left - 1), min(h, bottom + 1), min(w, right + 1)
    alpha = feather_alpha(mask[y0:y1, x0:x1], feather)
    return alpha[top - y0 : bottom - y0, left - x0 : right - x0]


def blur_known(
    values: np.ndarray, known: np.ndarray, sigma: float, floor: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised convolution: `values` (H, W, C) blurred by `sigma` over the `known` pixels (H, W) alone, so the
    others lend nothing; and the blurred weight, the share of known pixels around (where it is below `floor`
    there is nothing to average and the first is meaningless)."""
    weight = known.astype(np.float32)
    spread = cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma)
    around = cv2.GaussianBlur(weight, (0, 0), sigma)
    return spread / np.maximum(around, floor)[..., None], around


def image_digest(image: Image.Image) -> str:
    """The content hash of an image: mode, size and pixels."""
    digest = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()
