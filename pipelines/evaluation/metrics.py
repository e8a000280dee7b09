"""Weight-free measures of a swap, on the output, the original and the masks (arrays in main-image pixels).

    pattern_coverage        share of mask pixels visibly changed (sum over channels of |dRGB| > 30)
    shading_kept            Pearson correlation of Gaussian-blurred (sigma 6 px) luminance, output vs original,
                            inside the mask: the garment's folds and light survive. The blur only sees mask
                            pixels (normalised convolution): a plain blur lets the scene around the mask bleed in
                            and credits a flat paste with the outline's shading
    shading_depth           how deep the light and folds are in the output against the original: the slope of the
                            output's log blurred luminance (as for shading_kept) on the original's, inside the mask.
                            1 when the folds are as deep, 0.15 when faded to 15 % (which correlation cannot see)
    pattern_structure       the pattern's own structure in the output, not just its mean colour: the correlation of
                            the output (RGB) with the pattern as the engine tiles it over the grown mask's box
                            (placement's tile_grid), inside the mask; see `structure_carried`
    object_structure        the same for an object: the output against the cut-out as the engine fits it into the
                            grown mask's box (placement's fit_into), where its alpha is at least 0.5
    pattern_colour_carried  1 - |mean_out - mean_pattern| / |mean_orig - mean_pattern| inside the mask (RGB
                            means, Euclidean): 1 when the mask took the pattern's mean colour, 0 when it kept its own
    backdrop_leak           share of the mask in the product's old backdrop colour (the median of the object
                            image's frame, within 16 levels per channel): a plain backdrop brought along
    outside_changed         pixels outside the grown mask that differ from the original (must be 0)
    inclusion_contrast      grey levels by which the output over a hand-marked badge or tag inside the mask differs
                            from the mask just around it (the worst badge): a pale patch of the pattern stands out
    edge_fringe             grey levels by which a placed object's edge stands beyond both the scene around it
                            and its own inside, in the direction of its old backdrop (a light line around an object
                            cut from white); see `edge_fringe`
    fill_texture            an erase: robust spread (1.4826 x MAD) of the fill's fine detail (luminance minus its blur
                            at sigma 2) over that of a 15 px ring around the mask in the original; 1 = as textured
                            as its surroundings, a smooth fill scores near 0. Robust: an edge crossing the ring (a
                            tyre beside the hole) is not texture the fill should have
    structure_left          an erase: share of the mask whose luminance stands out of the ring's (beyond 4 robust
                            deviations of it, and at least 20 levels): what is left of the erased thing

"The mask" is the caller's mask; the grown mask is only used for the outside check.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from pipelines.imageops import LUMA, euclidean_distance, grow_mask

CHANGED = 30  # sum of |dRGB| above which a pixel counts as visibly changed
SHADING_SIGMA = 6.0
FLAT = 0.5  # grey levels: an image whose values all lie this close to their mean has no structure to compare
STRUCTURE_SIGMA = 1.5  # output and reference are compared at this blur: a pixel of shift or softening costs little
COLOUR_BIN = 8
BACKDROP_NEAR = 16  # levels on every channel within which a pixel has the old backdrop's colour
FRINGE_BAND = 3  # the band checked for a fringe: the outline and this many pixels outside it
FRINGE_REFERENCE = 8  # the scene around is read 4-8 px outside the outline, the object's inside 4-8 px in
FRINGE_SECTORS = 16  # the outline is judged in this many sectors around the object's centre
INCLUSION_RING = (4, 24)  # the fabric around a badge is read this many pixels outside it
FILL_RING = 15
DETAIL_SIGMA = 2.0
STANDS_OUT = 4.0  # robust deviations (1.4826 x MAD) of the ring's luminance
STANDS_OUT_MIN = 20.0

THRESHOLDS: dict[str, tuple[str, float]] = {
    "pattern_coverage": (">=", 0.97),
    "shading_kept": (">=", 0.6),
    "shading_depth": ("in", (0.5, 2.0)),
    "pattern_structure": (">=", 0.5),
    "object_structure": (">=", 0.5),
    "pattern_colour_carried": (">=", 0.8),
    "backdrop_leak": ("<=", 0.10),
    "outside_changed": ("==", 0),
    "box_iou": (">=", 0.85),
    "edge_fringe": ("<=", 10.0),
    "inclusion_contrast": ("<=", 20.0),
    "fill_texture": ("in", (0.6, 1.6)),
    "structure_left": ("<=", 0.01),
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


def shading_depth(out: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    """The least-squares slope of log blurred luminance, output on original: light is a factor, so a pattern that
    keeps the folds at full depth under it scores 1 whatever its colour, and one lit at 15 % of their depth 0.15."""
    blurred_out = np.log(np.maximum(_blur_inside(out.astype(np.float64) @ LUMA, mask)[mask], 1.0))
    blurred_original = np.log(np.maximum(_blur_inside(original.astype(np.float64) @ LUMA, mask)[mask], 1.0))
    centred = blurred_original - blurred_original.mean()
    spread = float((centred * centred).sum())
    return float((centred * (blurred_out - blurred_out.mean())).sum() / spread) if spread else 0.0


def structure_carried(out: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """Pearson correlation of the output's RGB with the reference's (all three channels together, so stripes that
    differ only in hue count) over `region`, both blurred at STRUCTURE_SIGMA seeing only its pixels.

    Shading and a colour transfer scale the pattern's contrast but keep where its light and dark fall: they lower
    the score a little, while a flat colour, noise or the old content score about 0 whatever their mean colour.
    """
    if not region.any():
        return 0.0
    seen = _blur_inside(out.astype(np.float64), region, STRUCTURE_SIGMA)[region]
    wanted = _blur_inside(reference.astype(np.float64), region, STRUCTURE_SIGMA)[region]
    seen, wanted = seen - seen.mean(axis=0), wanted - wanted.mean(axis=0)
    if min(np.abs(seen).max(), np.abs(wanted).max()) < FLAT:  # correlation would read the blur's rounding as detail
        return 0.0
    return float((seen * wanted).sum() / np.sqrt((seen * seen).sum() * (wanted * wanted).sum()))


def _blur_inside(values: np.ndarray, mask: np.ndarray, sigma: float = SHADING_SIGMA) -> np.ndarray:
    weight = mask.astype(np.float64)
    coverage = np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-9)
    if values.ndim == 3:
        weight, coverage = weight[..., None], coverage[..., None]
    return cv2.GaussianBlur(values * weight, (0, 0), sigma) / coverage


def pattern_colour_carried(out: np.ndarray, original: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> float:
    mean_pattern = pattern.reshape(-1, 3).astype(np.float64).mean(axis=0)
    mean_out = out[mask].astype(np.float64).mean(axis=0)
    mean_original = original[mask].astype(np.float64).mean(axis=0)
    gap = np.linalg.norm(mean_original - mean_pattern)
    if gap == 0:
        return 1.0
    return float(1.0 - np.linalg.norm(mean_out - mean_pattern) / gap)


def backdrop_leak(out: np.ndarray, mask: np.ndarray, backdrop: np.ndarray | None = None) -> float:
    """Share of the mask in the object's old backdrop colour (within BACKDROP_NEAR on every channel); with the
    backdrop unknown, of its single most common colour. A scene whose own ground behind the object is one flat
    colour (a black backdrop in the photo) is not a leak of the product's white."""
    pixels = out[mask].astype(np.int32)
    if backdrop is not None:
        return float(np.mean(np.abs(pixels - backdrop).max(axis=1) <= BACKDROP_NEAR))
    bins = pixels // COLOUR_BIN
    keys = (bins[:, 0] * 64 + bins[:, 1]) * 64 + bins[:, 2]
    return float(np.bincount(keys).max() / len(keys))


def outside_changed(out: np.ndarray, original: np.ndarray, grown: np.ndarray) -> int:
    return int((np.any(out != original, axis=2) & ~grown).sum())


def edge_fringe(out: np.ndarray, coverage: np.ndarray, backdrop: float | None) -> float:
    """Grey levels by which the object's edge is lighter (darker) than both the scene and its inside, where its
    old backdrop (brightness `backdrop`, None: unknown, both ways) was lighter (darker) than the scene.

    The outline is where `coverage` (the placed object's alpha) crosses 0.5; pixels are grouped in 1-px layers
    by their distance to it. The band is the 1-3 px layers outside it and the outline's own pixels (a matte that
    counted the backdrop's mixed pixels as object holds the fringe's core just inside its 0.5 line). In each
    sector around the object, the band's most extreme layer median is set against the scene's most extreme
    layer median (4-8 px out: a scene lighter near the object is no fringe) and the median of the object's
    inside (4-8 px in, where a wide fringe's ramp still reaches: its extreme would hide it). The measure is the
    mean excess over the sectors. Medians per layer make grain or a specular dot count for nothing; a line along
    the edge counts in full.
    """
    body = coverage >= 0.5
    if not body.any() or body.all():
        return 0.0
    layers = np.where(body, 1 - np.rint(euclidean_distance(body)), np.rint(euclidean_distance(~body)))
    layers = layers.astype(np.int32)
    sectors = _sectors(body)
    brightness = out.astype(np.float64) @ LUMA
    excesses = []
    for sector in range(FRINGE_SECTORS):
        medians = _layer_medians(brightness, layers, sectors == sector)
        if medians is not None:
            excesses.append(_sector_excess(*medians, backdrop))
    return float(np.mean(excesses)) if excesses else 0.0


def _sectors(body: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(body)
    rows, cols = np.indices(body.shape)
    angle = np.arctan2(rows - ys.mean(), cols - xs.mean())
    return ((angle + np.pi) / (2 * np.pi) * FRINGE_SECTORS).astype(np.int32) % FRINGE_SECTORS


def _layer_medians(brightness: np.ndarray, layers: np.ndarray, sector: np.ndarray):
    """The band's layer medians, those of both its sides, and the scene's median, in one sector (None where one
    is missing)."""
    found = {}
    for layer in range(-FRINGE_REFERENCE + 1, FRINGE_REFERENCE + 1):
        pixels = brightness[sector & (layers == layer)]
        if len(pixels):
            found[layer] = float(np.median(pixels))
    band = [found[k] for k in range(FRINGE_BAND + 1) if k in found]
    inside = [found[k] for k in range(-FRINGE_REFERENCE + 1, -FRINGE_BAND + 1) if k in found]
    scene = [found[k] for k in range(FRINGE_BAND + 1, FRINGE_REFERENCE + 1) if k in found]
    return (band, [float(np.median(inside)), *scene], float(np.median(scene))) if band and inside and scene else None


def _sector_excess(band: list[float], sides: list[float], scene: float, backdrop: float | None) -> float:
    lighter, darker = max(band) - max(sides), min(sides) - min(band)
    if backdrop is None:
        return max(lighter, darker, 0.0)
    return max(lighter if backdrop > scene else darker, 0.0)


def backdrop_colour(obj: np.ndarray) -> np.ndarray | None:
    """The median colour (RGB) of an object image's outer frame of pixels: its backdrop, when it was shot on one
    (None when the image has transparency: it was cut out already and its old backdrop is unknown)."""
    if obj.ndim == 3 and obj.shape[2] == 4 and obj[..., 3].min() < 250:
        return None
    rgb = obj[..., :3].astype(np.float64) if obj.ndim == 3 else np.repeat(obj[..., None], 3, axis=2)
    frame = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(frame, axis=0)


def backdrop_brightness(obj: np.ndarray) -> float | None:
    """The brightness of the object's backdrop (backdrop_colour), None when unknown."""
    colour = backdrop_colour(obj)
    return None if colour is None else float(colour @ LUMA)


def fill_texture(out: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    inside = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ring = _ring(mask)
    if not inside.any() or not ring.any():
        return 0.0
    return _robust_spread(_detail(out)[inside]) / max(_robust_spread(_detail(original)[ring]), 1e-6)


def structure_left(out: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    ring = _luminance(original)[_ring(mask)]
    if not mask.any() or ring.size == 0:
        return 0.0
    centre = np.median(ring)
    spread = 1.4826 * np.median(np.abs(ring - centre))
    return float(np.mean(np.abs(_luminance(out)[mask] - centre) > max(STANDS_OUT * spread, STANDS_OUT_MIN)))


def _robust_spread(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation: the typical detail, not an edge that crosses the ring."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _ring(mask: np.ndarray) -> np.ndarray:
    return grow_mask(mask, FILL_RING) & ~mask


def _luminance(image: np.ndarray) -> np.ndarray:
    return image[..., :3].astype(np.float32) @ LUMA.astype(np.float32)


def _detail(image: np.ndarray) -> np.ndarray:
    luminance = _luminance(image)
    return luminance - cv2.GaussianBlur(luminance, (0, 0), DETAIL_SIGMA)


def inclusion_contrast(out: np.ndarray, mask: np.ndarray, inclusions: np.ndarray) -> float:
    """The largest |mean luminance over an inclusion - mean over the mask 4-24 px around it|, in grey levels.

    The pattern's own light and dark average out over a badge's area and its ring, so a pattern that runs through
    the badge with the fabric's light scores a few levels, and one lit by the badge's own brightness its step.
    """
    brightness = out.astype(np.float64) @ LUMA
    labels, count = ndimage.label(inclusions)
    worst = 0.0
    for index in range(1, count + 1):
        inclusion = labels == index
        distance = euclidean_distance(~inclusion)
        ring = mask & ~inclusions & (distance > INCLUSION_RING[0]) & (distance <= INCLUSION_RING[1])
        if ring.any():
            worst = max(worst, abs(brightness[inclusion].mean() - brightness[ring].mean()))
    return float(worst)


def passes(name: str, value: float) -> bool:
    op, limit = THRESHOLDS[name]
    if op == "in":
        return limit[0] <= value <= limit[1]
    return {">=": value >= limit, "<=": value <= limit, "==": value == limit}[op]
