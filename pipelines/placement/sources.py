"""Where the fill may take its patches: the ground the hole lies on.

The window around the hole is cut into regions by strong edges and by colours far from those around the hole; the
ground is the regions that hold a good share of the ring around it. A strong edge is one well above the texture
around the hole (so brick joints or gravel are not edges, and a distinct object's outline on a plain table is).
What lies beyond such an edge, a cup near the hole, the bike a kickstand joins, is not ground the hole continues,
and copying from it is what makes a fill show a ghost of something.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.imageops import blur_known, grow_mask

WORK_SIDE = 512
EDGE_SIGMA = 3.0  # colour gradients of the image blurred this much: texture (grain, joints, fur) averages out
RING = 15  # the texture around the hole is measured in this many pixels past it
TEXTURE_PERCENTILE = 90  # the texture's gradient: this percentile over the ring's ground (joints included)
STRONG_OVER_TEXTURE = 2.0  # an edge is strong at this many times the texture's gradient...
MIN_STRONG = 3.0  # ...and at least this many levels per pixel
UNLIKE = 6.0  # Mahalanobis distance from the ring's colours beyond which a pixel is not the hole's ground
COLOUR_FLOOR = 6.0  # levels added to the ring's colour spread
TYPICAL = 80  # percentile of the ring's colours its statistics are taken from
COMPONENTS = 3  # clusters the ring's typical colours are modelled as (two grounds, and a shade between)
CLUSTER_SAMPLE = 4000  # ring colours the clusters are found on
CLUSTER_ROUNDS = 10
MIN_SHARE = 0.08  # of the ring a region must hold to be ground the hole lies on
MIN_GROUND = 0.5  # reachable ground at least this share of the hole's area, else the edges are relaxed
RELAXATIONS = 3
SEAM = round(3 * EDGE_SIGMA)  # an edge band up to twice this wide between two grounds is ground: the line they meet on


def allowed_sources(image: np.ndarray, hole: np.ndarray, unseen: np.ndarray | None = None) -> np.ndarray:
    """Pixels of `image` (float RGB) the fill of `hole` may copy from: the regions holding at least MIN_SHARE of
    the ring around it, with the edges bounding them (a patch may straddle a table's edge that runs into the
    hole). `unseen` pixels (old content a placed object will hide) are, like the hole's, no evidence of the ground:
    neither are read. Found at most WORK_SIDE px a side: ground and outlines are large-scale things."""
    unknown = hole if unseen is None else hole | unseen
    height, width = hole.shape
    if max(height, width) <= WORK_SIDE:
        return _allowed(image, hole, unknown)
    size = (
        max(1, round(width * WORK_SIDE / max(height, width))),
        max(1, round(height * WORK_SIDE / max(height, width))),
    )
    smaller = cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    smaller_hole = cv2.resize(hole.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    smaller_unknown = cv2.resize(unknown.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    allowed = _allowed(smaller, smaller_hole, smaller_unknown)
    return cv2.resize(allowed.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def _allowed(image: np.ndarray, hole: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    blurred = _blurred_around(image, unknown)
    gradient = _gradient(blurred)
    ring = grow_mask(hole, RING) & ~unknown
    if not ring.any():
        return np.ones_like(hole)
    unlike = _colour_distance(blurred, blurred[ring])
    ground_ring = ring & (unlike <= UNLIKE)  # not the tyre of a bike the hole touches
    texture = float(np.percentile(gradient[ground_ring if ground_ring.any() else ring], TEXTURE_PERCENTILE))
    threshold = max(MIN_STRONG, STRONG_OVER_TEXTURE * texture)
    for _ in range(RELAXATIONS):
        ground = _surrounding((gradient <= threshold) & (unlike <= UNLIKE) & ~unknown, ring)
        if ground.sum() >= MIN_GROUND * hole.sum():
            return _with_seams(ground, unknown)
        threshold, unlike = threshold * 2, unlike / 2
    return np.ones_like(hole)


def _blurred_around(image: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """`image` blurred by EDGE_SIGMA over its known pixels only (normalised convolution): the hole still holds
    what is being removed, and a plain blur spreads it over the ring, where it passes for the ground's colours
    and its outline for the ground's texture. Inside `unknown`, the known colours around, smoothly."""
    blurred, weight = blur_known(image.astype(np.float32), ~unknown, EDGE_SIGMA, floor=1e-3)
    plain = cv2.GaussianBlur(image.astype(np.float32), (0, 0), EDGE_SIGMA)
    return np.where(weight[..., None] > 1e-3, blurred, plain)


def _with_seams(ground: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`ground` with the edges that bound it: the band of strong gradient where two grounds meet (a wall and the
    floor, sea and sky) is as wide as the blur that found it, and without it no source patch holds the line they
    meet on, so the fill cannot carry that line across the hole; it stops where the hole's own patches happen to
    meet. Closing fills bands narrower than 2 x SEAM lying between ground on both sides, not the outline of a
    distinct object (non-ground beyond it) nor the hole."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SEAM + 1, 2 * SEAM + 1))
    padded = cv2.copyMakeBorder(ground.astype(np.uint8), SEAM, SEAM, SEAM, SEAM, cv2.BORDER_REPLICATE)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disc)[SEAM:-SEAM, SEAM:-SEAM].astype(bool)
    with_edges = ground | (closed & ~hole)
    return cv2.dilate(with_edges.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _colour_distance(blurred: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Each pixel's distance from the ring's colours (blurred): how unlike the ground around the hole it is. The
    ring's typical colours (its least typical fifth left out: a distinct object reaching into it) are modelled as
    COMPONENTS clusters, and a pixel's distance is its Mahalanobis distance from the nearest one. The ring often
    holds two grounds (a wall and a floor, sea and sky): one Gaussian over both stretches along the line between
    them and takes in every colour near it (a rug darker than the floor, on a grey image every grey); each
    ground's own cluster does not. Each spread is floored so a plain ring does not make every shade "unlike"."""
    if len(ring) < 8:
        return np.zeros(blurred.shape[:2], np.float32)
    mean, inverse = _colour_statistics(ring)
    typical = _mahalanobis(ring, mean, inverse) <= np.percentile(_mahalanobis(ring, mean, inverse), TYPICAL)
    colours = blurred.reshape(-1, 3)
    nearest = np.full(len(colours), np.inf)
    for cluster in _clusters(ring[typical]):
        mean, inverse = _colour_statistics(cluster)
        nearest = np.minimum(nearest, _mahalanobis(colours, mean, inverse))
    return nearest.reshape(blurred.shape[:2]).astype(np.float32)


def _clusters(colours: np.ndarray) -> list[np.ndarray]:
    """`colours` split into up to COMPONENTS clusters (OpenCV's k-means on a sample, started from quantiles along
    their principal axis: deterministic); clusters of fewer than 8 colours are left out."""
    sample = np.ascontiguousarray(colours[:: max(1, len(colours) // CLUSTER_SAMPLE)], dtype=np.float32)
    centred = sample - sample.mean(axis=0)
    axis = np.linalg.eigh(np.cov(centred, rowvar=False))[1][:, -1]
    along = centred @ axis
    starts = np.quantile(along, (np.arange(COMPONENTS) + 0.5) / COMPONENTS)
    initial = np.abs(along[:, None] - starts[None, :]).argmin(axis=1).astype(np.int32).reshape(-1, 1)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, CLUSTER_ROUNDS, 0.0)
    _, labels, _ = cv2.kmeans(sample, COMPONENTS, initial, criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    labels = labels.ravel()
    return [sample[labels == k].astype(np.float64) for k in range(COMPONENTS) if (labels == k).sum() >= 8]


def _colour_statistics(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    covariance = np.cov(colours, rowvar=False) + np.eye(3) * COLOUR_FLOOR**2
    return colours.mean(axis=0), np.linalg.inv(covariance)


def _mahalanobis(colours: np.ndarray, mean: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    centred = colours - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, inverse, centred), 0.0))


def _gradient(blurred: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude (over the three channels: a red bike on a grey floor of the same brightness
    has an edge) per pixel of the blurred image."""
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.sqrt((gx * gx + gy * gy).sum(axis=2))


def _surrounding(passable: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """The regions of `passable` (8-connected) that hold at least MIN_SHARE of the ring around the hole: what the
    hole lies on. A region that only reaches the ring at one place, the bike a kickstand joins, the cup a spoon
    leans on, is a neighbour, not ground."""
    count, labels = cv2.connectedComponents(passable.astype(np.uint8), connectivity=8)
    shares = np.bincount(labels[ring], minlength=count) / max(int(ring.sum()), 1)
    keep = shares >= MIN_SHARE
    keep[0] = False  # not passable
    return keep[labels]
