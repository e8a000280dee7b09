"""Weight-free measures of a swap, on the output, the original and the masks (arrays in main-image pixels).

    pattern_coverage        share of mask pixels visibly changed (sum over channels of |dRGB| > 30)
    shading_kept            Pearson correlation of Gaussian-blurred (sigma 6 px) luminance, output vs original,
                            inside the mask: the garment's folds and light survive. The blur only sees mask
                            pixels (normalised convolution): a plain blur lets the scene around the mask bleed in
                            and credits a flat paste with the outline's shading
    pattern_colour_carried  1 - |mean_out - mean_pattern| / |mean_orig - mean_pattern| inside the mask (RGB
                            means, Euclidean): 1 when the mask took the pattern's mean colour, 0 when it kept its own
    backdrop_leak           share of the mask taken by its single most common colour (bins 8 values wide per
                            channel): a product's plain backdrop brought along shows as one flat colour
    outside_changed         pixels outside the grown mask that differ from the original (must be 0)

"The mask" is the caller's mask; the grown mask is only used for the outside check.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.imageops import LUMA

CHANGED = 30  # sum of |dRGB| above which a pixel counts as visibly changed
SHADING_SIGMA = 6.0
COLOUR_BIN = 8

THRESHOLDS: dict[str, tuple[str, float]] = {
    "pattern_coverage": (">=", 0.97),
    "shading_kept": (">=", 0.6),
    "pattern_colour_carried": (">=", 0.8),
    "backdrop_leak": ("<=", 0.10),
    "outside_changed": ("==", 0),
    "box_iou": (">=", 0.85),
}


def iou(selected: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(selected, truth).sum()
    return float(np.logical_and(selected, truth).sum() / union) if union else 1.0


def pattern_coverage(out: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    change = np.abs(out.astype(np.int32) - original.astype(np.int32)).sum(axis=2)
    return float((change[mask] > CHANGED).mean())


def shading_kept(out: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    blurred_out = _blur_inside(out.astype(np.float64) @ LUMA, mask)[mask]
    blurred_original = _blur_inside(original.astype(np.float64) @ LUMA, mask)[mask]
    if blurred_out.std() == 0 or blurred_original.std() == 0:
        return 0.0
    return float(np.corrcoef(blurred_out, blurred_original)[0, 1])


def _blur_inside(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weight = mask.astype(np.float64)
    coverage = np.maximum(cv2.GaussianBlur(weight, (0, 0), SHADING_SIGMA), 1e-9)
    return cv2.GaussianBlur(values * weight, (0, 0), SHADING_SIGMA) / coverage


def pattern_colour_carried(out: np.ndarray, original: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> float:
    mean_pattern = pattern.reshape(-1, 3).astype(np.float64).mean(axis=0)
    mean_out = out[mask].astype(np.float64).mean(axis=0)
    mean_original = original[mask].astype(np.float64).mean(axis=0)
    gap = np.linalg.norm(mean_original - mean_pattern)
    if gap == 0:
        return 1.0
    return float(1.0 - np.linalg.norm(mean_out - mean_pattern) / gap)


def backdrop_leak(out: np.ndarray, mask: np.ndarray) -> float:
    bins = out[mask].astype(np.int32) // COLOUR_BIN
    keys = (bins[:, 0] * 64 + bins[:, 1]) * 64 + bins[:, 2]
    return float(np.bincount(keys).max() / len(keys))


def outside_changed(out: np.ndarray, original: np.ndarray, grown: np.ndarray) -> int:
    return int((np.any(out != original, axis=2) & ~grown).sum())


def passes(name: str, value: float) -> bool:
    op, limit = THRESHOLDS[name]
    return {">=": value >= limit, "<=": value <= limit, "==": value == limit}[op]
