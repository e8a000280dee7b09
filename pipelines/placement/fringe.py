"""Tightening the object's matte where a band of its old backdrop survives along the edge (a fringe).

A matte from a plain backdrop counts the edge's mixed pixels that are more object than backdrop as opaque, and
a caller's own cut-out may carry a halo: either way a line of the old backdrop's colour would ring the object
in the new scene. A true edge pixel mixes the object's inside with what lies behind it, so its brightness lies
between the two; one lighter (or darker) than both can only be the old backdrop, whatever its colour. Such
pixels are peeled from the outside in, a few pixels deep at most (so a fringe never punches a hole), with
whatever the peel cuts off from the object, and the new edge is softened.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.imageops import LUMA, euclidean_distance

FRINGE_DEPTH = 6  # placed pixels: the deepest a fringe is peeled (a lens-blurred edge, cut out, is about this)
TOLERANCE = 10.0  # grey levels an edge pixel may stand beyond both the object's inside and the scene
INSIDE_SIGMA = 2.0  # the object's inside brightness is smoothed over this many pixels (grain, specular dots)
SCENE_SIGMA = 1.5  # and the scene's
SOFTEN = 0.8  # the peeled edge is softened by a blur of this sigma
PRESENT = 0.02  # alpha above which a pixel is part of the matte


def tighten_matte(layer: np.ndarray, alpha: np.ndarray, behind: np.ndarray) -> np.ndarray:
    """`alpha` with the fringe peeled: `layer` is the object's colour (float RGB), `behind` the scene under it."""
    present = alpha > PRESENT
    depth = _depth(present)
    core = present & (depth > FRINGE_DEPTH) & (alpha > 0.97)
    if not core.any():  # too thin to tell its inside from its edge
        return alpha
    fringe = _fringe(layer @ LUMA, behind @ LUMA, present & (depth <= FRINGE_DEPTH), core)
    peeled = _holding(fringe, depth < 1.5)
    if not peeled.any():
        return alpha
    peeled |= _holding(present, core) & ~_holding(present & ~peeled, core)  # specks the peel cut off
    peel = np.maximum(peeled, cv2.GaussianBlur(peeled.astype(np.float32), (0, 0), SOFTEN))
    return alpha * (1.0 - peel)


def _fringe(brightness: np.ndarray, scene: np.ndarray, edge: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Edge pixels lighter than both the lightest inside nearby and the scene, or darker than both darkest."""
    lightest, darkest, reach = _inside_range(brightness, core)
    scene = cv2.GaussianBlur(scene, (0, 0), SCENE_SIGMA)
    high = np.maximum(lightest, scene) + TOLERANCE
    low = np.minimum(darkest, scene) - TOLERANCE
    return edge & (reach <= 2 * FRINGE_DEPTH) & ((brightness > high) | (brightness < low))


def _inside_range(brightness: np.ndarray, core: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lightest and darkest of the object's smoothed inside brightness within FRINGE_DEPTH of each pixel's
    nearest core pixel, and how far that core pixel is. A range, not one value: an edge as light as some of the
    inside nearby (a cup's white rim, a dark band under it, then its white inner wall) is the object's own."""
    weight = core.astype(np.float32)
    smooth = cv2.GaussianBlur(brightness * weight, (0, 0), INSIDE_SIGMA)
    smooth /= np.maximum(cv2.GaussianBlur(weight, (0, 0), INSIDE_SIGMA), 1e-6)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FRINGE_DEPTH + 1, 2 * FRINGE_DEPTH + 1))
    lightest = cv2.dilate(np.where(core, smooth, -np.inf).astype(np.float32), disk)
    darkest = cv2.erode(np.where(core, smooth, np.inf).astype(np.float32), disk)
    reach, nearest = cv2.distanceTransformWithLabels(
        (~core).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    # Each core pixel is its own label; a pixel takes the values of the core pixel its label names.
    by_label = np.zeros((2, int(nearest.max()) + 1), np.float32)
    by_label[:, nearest[core]] = lightest[core], darkest[core]
    return by_label[0][nearest], by_label[1][nearest], reach


def _depth(present: np.ndarray) -> np.ndarray:
    """How deep each matte pixel lies, 1 on its outer pixels; the layer's border counts as outside (an object
    fitted to the mask's box is cut by it, and the cut-out's own edge lies there)."""
    return euclidean_distance(np.pad(present, 1))[1:-1, 1:-1]


def _holding(region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The parts of `region` (8-connected) that hold a seed."""
    count, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    held = np.zeros(count, bool)
    held[labels[seeds & region]] = True
    held[0] = False
    return held[labels]
