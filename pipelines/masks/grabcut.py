"""Selection without weights: OpenCV GrabCut, started from the caller's box or points.

GrabCut models the object's and the background's colours (Gaussian mixtures) and cuts along the edges between
them. It runs twice:
1. at a working size (WORK_SIDE on the long side of the box plus context), from the box (outside: background,
   inside: probably object) or from the points (inside points: object, outside points: background; a wide box
   around the inside points is searched: near them probably object, the rest of it probably background, beyond
   it background);
2. at full resolution (or REFINE_PIXELS, whichever is smaller) on the same crop, with everything but a band
   along the first cut's edge fixed: the edge is placed on the full-size pixels.
Only the parts touching an inside point (or, for a box, the largest part) are kept, and small holes are filled
(at the second pass's size, then scaled to the crop).

A caller may stop the work (`stop`, asked between GrabCut's iterations and between the stages: a server's deadline
passed, its client left): no step between two questions works on more than REFINE_PIXELS pixels, so the work ends
within about one iteration at that size of the question answering yes.

Points alone are the weaker selector here: the object is looked for in a box around them, and where similar
objects stand close by GrabCut can take them for background and keep little more than the points. A box (with
points to correct it) is what GrabCut is made for; SAM 2 (segmenters.py) handles single clicks well.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.errors import Stopped
from pipelines.imageops import to_rgb
from pipelines.masks.selector import Box, Selector, StopFn

WORK_SIDE = 400  # pixels on the long side of the first pass (its cost grows with the pixels)
REFINE_PIXELS = 2_000_000  # the second pass runs at full size up to this many pixels, else scaled down to it
CONTEXT = 0.1  # background around the box the colour model learns from, as a share of the box's longer side
POINTS_REACH = 0.75  # points alone: the object is looked for in the inside points' box grown by this share of
POINTS_MIN_REACH = 0.3  # its longer side, and by at least this share of the image's longer side
POINTS_LIKELY = 0.35  # points alone: a disk of this share of that region's longer side around each inside point
# starts as probably object, the rest of the region as probably background (either may change sides)
POINT_RADIUS = 0.012  # the disk each point fixes, as a share of the crop's longer side
BAND = 0.01  # the refined band's half width, as a share of the crop's longer side (at least 2 px)
BORDER = 0.03  # a box over the whole image: this share of the side along the border starts as background
HOLE_SHARE = 0.002  # holes smaller than this share of the selection are filled
ITERATIONS = 5
REFINE_ITERATIONS = 2


def grabcut_select(image: Image.Image, selector: Selector, stop: StopFn | None = None) -> np.ndarray:
    """The selected region as a boolean mask of the image's size; Stopped as soon as `stop()` says so."""
    stop = stop or _never
    rgb = np.asarray(to_rgb(image))
    height, width = rgb.shape[:2]
    region = selector.box if selector.box is not None else _points_region(selector, (width, height))
    crop = _with_context(region, (width, height))
    left, top, right, bottom = crop
    part = rgb[top:bottom, left:right]
    labels = _initial_labels(part.shape[:2], region, crop, selector)
    first = _first_pass(part, labels, stop)
    refined, scale = _refine(part, first, selector, crop, stop)
    _stop_if_asked(stop)
    chosen = _keep_selected(refined, selector, crop, scale)
    if scale != 1.0:
        crop_size = (right - left, bottom - top)
        chosen = cv2.resize(chosen.astype(np.float32), crop_size, interpolation=cv2.INTER_LINEAR) >= 0.5
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = region  # nothing outside the box: the refinement's band may reach past it
    mask[y0:y1, x0:x1] = chosen[y0 - top : y1 - top, x0 - left : x1 - left]
    return mask


def _points_region(selector: Selector, size: tuple[int, int]) -> Box:
    inside = np.array([(x, y) for x, y, label in selector.points if label == 1])
    x0, y0 = inside.min(axis=0)
    x1, y1 = inside.max(axis=0) + 1
    grow = max(POINTS_MIN_REACH * max(size), POINTS_REACH * max(x1 - x0, y1 - y0))
    return (
        max(0, round(x0 - grow)),
        max(0, round(y0 - grow)),
        min(size[0], round(x1 + grow)),
        min(size[1], round(y1 + grow)),
    )


def _with_context(region: Box, size: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = region
    margin = max(8, round(CONTEXT * max(x1 - x0, y1 - y0)))
    return max(0, x0 - margin), max(0, y0 - margin), min(size[0], x1 + margin), min(size[1], y1 + margin)


def _initial_labels(shape: tuple[int, int], region: Box, crop: Box, selector: Selector) -> np.ndarray:
    """GrabCut's starting labels over the crop: background outside the region, probably object inside (points
    alone: near the inside points; the rest of their wide region would teach the object's model the floor or wall
    around it), and a fixed disk at each point."""
    labels = np.full(shape, cv2.GC_BGD, np.uint8)
    x0, y0, x1, y1 = (region[0] - crop[0], region[1] - crop[1], region[2] - crop[0], region[3] - crop[1])
    if selector.box is not None:
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    else:
        labels[y0:y1, x0:x1] = cv2.GC_PR_BGD
        likely = np.zeros(shape, np.uint8)
        radius = max(3, round(POINTS_LIKELY * max(x1 - x0, y1 - y0)))
        for x, y, label in selector.points:
            if label == 1:
                cv2.circle(likely, (x - crop[0], y - crop[1]), radius, 1, thickness=-1)
        labels[(likely == 1) & (labels == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD
    _fix_points(labels, selector, crop, 1.0)
    return labels


def _fix_points(labels: np.ndarray, selector: Selector, crop: Box, scale: float) -> None:
    """A disk of sure object (inside points) or sure background (outside points) at each point, in place."""
    if selector.points is None:
        return
    radius = max(2, round(POINT_RADIUS * max(labels.shape)))
    for x, y, label in selector.points:
        centre = (round((x - crop[0]) * scale), round((y - crop[1]) * scale))
        cv2.circle(labels, centre, radius, int(cv2.GC_FGD if label == 1 else cv2.GC_BGD), thickness=-1)


def _never() -> bool:
    return False


def _stop_if_asked(stop: StopFn) -> None:
    if stop():
        raise Stopped("the selection was stopped before it ended")


def _first_pass(part: np.ndarray, labels: np.ndarray, stop: StopFn) -> np.ndarray:
    """Object probability (0 or 1) at the crop's size, from GrabCut at the working size."""
    height, width = labels.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(part, size, interpolation=cv2.INTER_AREA)
    small_labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    if not (small_labels == cv2.GC_BGD).any():  # a box over the whole image: its border is probably background
        edge = max(2, round(BORDER * max(size)))
        border = np.ones(small_labels.shape, bool)
        border[edge:-edge, edge:-edge] = False
        small_labels[border & (small_labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
    result = _grabcut(small, small_labels, ITERATIONS, stop)
    return cv2.resize(result.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def _refine(
    part: np.ndarray, probability: np.ndarray, selector: Selector, crop: Box, stop: StopFn
) -> tuple[np.ndarray, float]:
    """The first cut's edge placed again on the (nearly) full-size pixels: only a band along it may change.
    The cut at the size it was made (at most REFINE_PIXELS), and that size's scale to the crop."""
    height, width = probability.shape
    scale = min(1.0, (REFINE_PIXELS / (height * width)) ** 0.5)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = part if scale == 1.0 else cv2.resize(part, size, interpolation=cv2.INTER_AREA)
    rough = cv2.resize(probability, size, interpolation=cv2.INTER_LINEAR) >= 0.5
    band_width = max(2, round(BAND * max(size)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_width + 1, 2 * band_width + 1))
    grown = cv2.dilate(rough.astype(np.uint8), kernel).astype(bool)
    shrunk = cv2.erode(rough.astype(np.uint8), kernel).astype(bool)
    labels = np.where(shrunk, cv2.GC_FGD, np.where(grown, cv2.GC_PR_FGD, cv2.GC_BGD)).astype(np.uint8)
    labels[grown & ~shrunk & ~rough] = cv2.GC_PR_BGD
    _fix_points(labels, selector, crop, scale)
    if not (labels == cv2.GC_PR_FGD).any():
        return rough, scale
    return _grabcut(picture, labels, REFINE_ITERATIONS, stop), scale


def _grabcut(picture: np.ndarray, labels: np.ndarray, iterations: int, stop: StopFn) -> np.ndarray:
    """Object pixels by GrabCut from `labels`; where one side has no pixels to model, the labels as they are.
    One iteration per call (the models carried from one to the next: the same cut as all at once), so that
    `stop` is asked between them."""
    labels = labels.copy()
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    picture = np.ascontiguousarray(picture[..., ::-1])
    cv2.setRNGSeed(0)
    mode = cv2.GC_INIT_WITH_MASK
    try:
        for _ in range(iterations):
            _stop_if_asked(stop)
            cv2.grabCut(picture, labels, None, background, foreground, 1, mode)
            mode = cv2.GC_EVAL
    except cv2.error:
        pass
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _local(points, crop: Box, shape: tuple[int, int], label: int, scale: float = 1.0) -> list[tuple[int, int]]:
    """The points with `label` that fall in the crop, as (row, column) in it at `scale`; a point outside the crop (an
    outside point far from the object) has nothing to say there, and must not index (or wrap around) the crop."""
    height, width = shape
    inside = [(x, y) for x, y, kind in points if kind == label and crop[0] <= x < crop[2] and crop[1] <= y < crop[3]]
    return [
        (min(height - 1, int((y - crop[1]) * scale)), min(width - 1, int((x - crop[0]) * scale))) for x, y in inside
    ]


def _keep_selected(mask: np.ndarray, selector: Selector, crop: Box, scale: float = 1.0) -> np.ndarray:
    """The parts the caller pointed into (for a box: the largest), with small holes filled; `mask` is the crop at
    `scale`."""
    parts, count = ndimage.label(mask)
    if count == 0:
        return mask
    if selector.points is not None:
        _, (rows, cols) = ndimage.distance_transform_edt(parts == 0, return_indices=True)
        inside = _local(selector.points, crop, mask.shape, 1, scale)
        keep = {parts[rows[y, x], cols[y, x]] for y, x in inside}  # the part at (or nearest to) each point
    else:
        keep = set()
    if not keep:
        sizes = ndimage.sum(mask, parts, range(1, count + 1))
        keep = {int(np.argmax(sizes)) + 1}
    chosen = np.isin(parts, list(keep))
    holes = ndimage.binary_fill_holes(chosen) & ~chosen
    hole_parts, hole_count = ndimage.label(holes)
    if hole_count:
        small = ndimage.sum(holes, hole_parts, range(1, hole_count + 1)) < HOLE_SHARE * chosen.sum()
        fill = set(np.flatnonzero(small) + 1)
        for y, x in _local(selector.points or (), crop, mask.shape, 0, scale):  # a hole made on purpose stays open
            fill.discard(hole_parts[y, x])
        chosen |= np.isin(hole_parts, list(fill))
    return chosen
