"""The fill's layout: where each ground goes inside the hole, so a line crossing it stays straight.

The fill (fill.py) starts its coarsest level from random matches near each hole pixel's nearest known pixel,
and the search keeps whatever layout that start makes. Across a wide hole the nearest known pixel of the
middle is its top or bottom edge, not its sides: where a wall meets a floor, the floor came up from the
hole's bottom edge past the line (a lump between the legs of a table placed there, a bulge where a rug was).
And on a coarse level few source patches hold such a line at all, so the search moves it where they do.

Here the lines that cross the hole are found and joined: strong edges in a ring just outside the hole, their
direction from the structure tensor, paired when two lie on one straight line through the hole with the same
colours on the same sides (a wall over a floor on the left and on the right). Then (fill.py) every hole pixel
of the coarsest level starts from a source near the nearest one it can see without crossing a joined line
(under the line the floor, over it the wall), and the patches on a line copy the surroundings along it, at
their offset from it, and are left by the search, down to the first level whose sources hold the line; the
finer levels refine as before. Nothing is drawn into the picture, and an edge with no partner (the end of a
rod, a corner) or a ridge (a thin rod or wire: the same colour on both sides) changes nothing.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from pipelines.imageops import blur_known

RING = (1.5, 4.5)  # the ring read for edges: known pixels this far from the hole
MIN_EDGE = 6.0  # levels per pixel a line must at least reach...
OVER_RING = 3.0  # ...and this many times the ring's median gradient (texture, at the coarsest level)
BLUR = 1.0  # the picture is blurred this much (over its known pixels) before its gradients are read
MAX_STRONG = 600  # strong ring pixels beyond this: a busy ring (texture), no lines looked for
MIN_LENGTH = 4  # px between the two ends of a line
CROSSING = 5.0  # px: the strong pixels this near a line's end are the one crossing (an edge is a few px wide)
INTO_HOLE = 0.35  # cosine between a line and the hole's inward normal where it meets the ring: it enters
MAX_ANGLE = np.deg2rad(15)  # a joined line's chord within this of each end's direction
SIDE = 2.5  # px from an end its side colours are read at
MAX_COLOUR_CHANGE = 0.5  # the side colours of the two ends differ by at most this share of the line's contrast
STRAIGHT = 0.5  # outside the hole the edge must run on straight, past its two ends together, this share of the
# line's length across the hole (past each at least MIN_LENGTH: a line hidden just past one end, behind a sofa or
# by the image's border, is still seen on the other side), before the fill carries it across
MIN_INSIDE = 0.5  # of a chord at least this share inside the hole (or unseen)
MAX_CENTRES = 4000  # the sources a target's nearest visible one is looked for among (a grid of them beyond)
PIN_WIDTH = 2  # targets this near a line (px at their level) are pinned to copies along it
REACH = 2  # a joined line extends this many patch widths past its ends: it blocks sight around its end too


def continued_lines(picture: np.ndarray, gap: np.ndarray, unseen: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of points (y, x), just outside `gap`, joined by a line of the surroundings that crosses it."""
    known = ~gap & ~unseen
    valid = cv2.erode(known.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
    blurred = blur_known(picture, known, BLUR)[0]
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    jxx, jyy, jxy = ((a * b).sum(axis=2) for a, b in ((gx, gx), (gy, gy), (gx, gy)))
    strength = np.sqrt(np.maximum((jxx + jyy + np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)) / 2, 0))
    distance, nearest = ndimage.distance_transform_edt(~gap, return_indices=True)
    ring = valid & (distance >= RING[0]) & (distance <= RING[1])
    if ring.sum() < 8:
        return []
    strong = ring & (strength >= max(MIN_EDGE, OVER_RING * float(np.median(strength[ring]))))
    ys, xs = np.nonzero(strong)
    if len(ys) < 2 or len(ys) > MAX_STRONG:
        return []
    points = np.stack([ys, xs], axis=1).astype(np.float64)
    angle = 0.5 * np.arctan2(2 * jxy[ys, xs], jxx[ys, xs] - jyy[ys, xs])  # of the gradient, in x-y
    along = np.stack([np.cos(angle), -np.sin(angle)], axis=1)  # (y, x): the edge's direction
    inward = np.stack([nearest[0][ys, xs] - ys, nearest[1][ys, xs] - xs], axis=1).astype(np.float64)
    inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-6)
    enters = np.abs((along * inward).sum(axis=1)) >= INTO_HOLE  # runs into the hole, not along its edge
    chord = points[None, :, :] - points[:, None, :]
    length = np.linalg.norm(chord, axis=2)
    unit = chord / np.maximum(length, 1e-6)[..., None]
    cos_first = np.abs((unit * along[:, None, :]).sum(axis=2))
    cos_second = np.abs((unit * along[None, :, :]).sum(axis=2))
    candidate = (length >= MIN_LENGTH) & (np.minimum(cos_first, cos_second) >= np.cos(MAX_ANGLE))
    candidate &= enters[:, None] & enters[None, :] & np.triu(np.ones_like(candidate), 1)
    inside = gap | unseen
    edge = cv2.erode(known.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # the border counts as known
    edge &= strength >= max(MIN_EDGE, OVER_RING * float(np.median(strength[ring]))) / 2
    direction = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    scored = []
    for k, m in zip(*np.nonzero(candidate), strict=True):
        a, b = points[k], points[m]
        reach = max(MIN_LENGTH, int(STRAIGHT * length[k, m]))
        seen = [_straight(edge, direction, e, e - o, reach) for e, o in ((a, b), (b, a))]
        if min(seen) < MIN_LENGTH or sum(seen) < reach:
            continue  # a line is carried across a hole only where it is seen to run straight, not a round rim
        score = _pairing(blurred, known, inside, points[k], points[m])
        if score is not None:
            tie = min(strength[ys[k], xs[k]], strength[ys[m], xs[m]]) / 1e6  # equal scores: the stronger pair
            scored.append((score - tie, k, m))
    lines, used = [], np.zeros(len(points), bool)
    for _, k, m in sorted(scored):
        if used[k] or used[m]:
            continue
        ends = []
        for end in (k, m):  # the crossing: the strong pixels around this end, their strength-weighted centre
            near = (np.linalg.norm(points - points[end], axis=1) <= CROSSING) & ~used
            ends.append(np.average(points[near], axis=0, weights=strength[ys[near], xs[near]]))
            used |= near
        lines.append((ends[0], ends[1]))
    return lines


def _straight(edge: np.ndarray, direction: np.ndarray, end: np.ndarray, outward: np.ndarray, reach: int) -> int:
    """How far (px, up to `reach`) the edge runs on straight past `end`, away from the hole: the run of pixels
    along `outward` that hold an edge of this direction (a gap of one allowed), stopped by the image's border."""
    unit = outward / np.linalg.norm(outward)
    height, width = edge.shape
    ys, xs = np.rint(end[None] + np.arange(1, reach + 1)[:, None] * unit[None]).astype(int).T
    within = np.flatnonzero((ys < 0) | (ys >= height) | (xs < 0) | (xs >= width))
    count = int(within[0]) if len(within) else reach
    ys, xs = ys[:count], xs[:count]
    angle = direction[ys, xs]
    ok = edge[ys, xs] & (np.abs(np.cos(angle) * unit[0] - np.sin(angle) * unit[1]) >= np.cos(MAX_ANGLE))
    broken = np.flatnonzero(~ok[:-1] & ~ok[1:])  # two misses in a row end the run
    ok = ok[: broken[0]] if len(broken) else ok
    held = np.flatnonzero(ok)
    return int(held[-1]) + 1 if len(held) else 0


def _pairing(picture, known, inside, a, b) -> float | None:
    """How well two ring pixels make one line (lower is better), or None: the chord between them runs mostly
    through the hole, with the same colours on the same sides at both ends."""
    chord = b - a
    length = float(np.linalg.norm(chord))
    steps = np.linspace(0, 1, max(2, int(length)))
    points = np.rint(a[None] + steps[:, None] * chord[None]).astype(int)
    if inside[points[:, 0], points[:, 1]].mean() < MIN_INSIDE:
        return None
    unit = chord / length
    normal = np.array([-unit[1], unit[0]])
    sides = []
    for end in (a, b):
        colours = [_colour_at(picture, known, end + sign * SIDE * normal) for sign in (1, -1)]
        if any(colour is None for colour in colours):
            return None
        sides.append(colours)
    contrast = min(np.linalg.norm(sides[0][0] - sides[0][1]), np.linalg.norm(sides[1][0] - sides[1][1]))
    change = max(np.linalg.norm(sides[0][k] - sides[1][k]) for k in range(2))
    if contrast < MIN_EDGE or change > MAX_COLOUR_CHANGE * contrast:
        return None
    return float(change / contrast)


def _colour_at(picture, known, point) -> np.ndarray | None:
    y, x = int(round(point[0])), int(round(point[1]))
    height, width = known.shape
    if not (0 <= y < height and 0 <= x < width) or not known[y, x]:
        return None
    return picture[y, x].astype(np.float64)


def along_lines(
    source: np.ndarray, targets: np.ndarray, lines, patch: int, field: np.ndarray
) -> tuple[np.ndarray, float]:
    """`field` with each target on a line (within PIN_WIDTH of it, between its ends, each extended by REACH
    patch widths) matched to the nearest source on the line's own course at the target's
    offset from it: the surroundings copied along the line. Returns where it did so (the targets the search
    must leave: few source patches hold the line at just their offset, and the search would move it) and the
    share of the targets on a line that found a source along it (on a coarse level the sources may not reach
    the line, and a finer level must pin it)."""
    kept = np.zeros(source.shape, bool)
    on_lines = found_any = 0
    for p, q, _ in _extended(lines, patch):
        on, found = _along(source, targets, p, q, PIN_WIDTH)
        good = found[:, 0] >= 0
        field[targets[on][good, 0], targets[on][good, 1]] = found[good]
        kept[targets[on][good, 0], targets[on][good, 1]] = True
        on_lines, found_any = on_lines + int(on.sum()), found_any + int(good.sum())
    return kept, found_any / max(on_lines, 1)


def visible_nnf(source: np.ndarray, targets: np.ndarray, lines, patch: int, seed: int) -> np.ndarray:
    """A first field: each target matched to a random source near the nearest one it can see without crossing
    a line (each extended by REACH patch widths past its ends, so it blocks the view around its end too): under
    a wall's line the floor, over it the wall, as in the surroundings."""
    centres = np.argwhere(source)
    field = np.zeros((*source.shape, 2), np.int32)
    rng = np.random.default_rng(seed)
    every = max(1, int(np.ceil(np.sqrt(len(centres) / MAX_CENTRES))))
    sample = centres[(centres[:, 0] % every == 0) & (centres[:, 1] % every == 0)]
    sample = centres if not len(sample) else sample
    points = sample.astype(np.float64)
    segments = _extended(lines, patch)
    for start in range(0, len(targets), 256):
        chunk = targets[start : start + 256]
        here = chunk.astype(np.float64)
        blocked = np.zeros((len(chunk), len(points)), bool)
        for p, q, _ in segments:
            blocked |= _crossing(here[:, None, :], points[None, :, :], p, q)
        distance = np.abs(here[:, None, :] - points[None, :, :]).max(axis=2)
        visible = np.where(blocked, np.inf, distance)
        nearest = visible.min(axis=1, keepdims=True)
        near = np.isfinite(visible) & (visible <= nearest + patch)
        near[~np.isfinite(nearest[:, 0])] = True  # sees none: any
        choice = np.array([rng.choice(np.flatnonzero(row)) for row in near])
        field[chunk[:, 0], chunk[:, 1]] = sample[choice]
    return field


def _extended(lines, patch: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each line's ends moved REACH patch widths outward, and its direction."""
    out = []
    for a, b in lines:
        unit = (b - a) / np.linalg.norm(b - a)
        out.append((a - REACH * patch * unit, b + REACH * patch * unit, unit))
    return out


def _along(source, targets, p, q, width) -> tuple[np.ndarray, np.ndarray]:
    """Which targets lie within `width` of segment p-q (between its ends), and for each of those the nearest
    allowed source centre on the line through it along `unit`, either way ((-1, -1) where none)."""
    unit = (q - p) / np.linalg.norm(q - p)
    offset = targets - p[None]
    t = offset @ unit
    across = offset[:, 0] * unit[1] - offset[:, 1] * unit[0]
    on = (t >= 0) & (t <= np.linalg.norm(q - p)) & (np.abs(across) <= width)
    height, width_ = source.shape
    steps = np.arange(1, 2 * max(height, width_))
    steps = np.stack([steps, -steps], axis=1).ravel()  # 1, -1, 2, -2, ...: the nearer first
    found = np.full((int(on.sum()), 2), -1, np.int32)
    for n, point in enumerate(targets[on]):
        ys, xs = np.rint(point[None] + steps[:, None] * unit[None]).astype(int).T
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width_)
        hits = np.flatnonzero(inside)[source[ys[inside], xs[inside]]]
        if len(hits):
            found[n] = ys[hits[0]], xs[hits[0]]
    return on, found


def _crossing(u: np.ndarray, v: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Whether segments u-v (broadcast arrays of points) cross the segment p-q (strictly)."""

    def side(a, b, c):
        return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])

    d1, d2 = side(p, q, u), side(p, q, v)
    d3, d4 = side(u, v, p), side(u, v, q)
    return (d1 * d2 < 0) & (d3 * d4 < 0)
