"""Removing what the mask held: the hole filled with patches of its own surroundings, so texture carries on.

An exemplar fill (Wexler et al. 2007, with PatchMatch for the search; what content-aware fill does), coarse to
fine: at the coarsest level every patch that overlaps the hole is matched at random near the ground nearest to
it (sky from the sky beside it); at each level the matches are improved by PatchMatch (patchmatch.py) and the
hole is re-estimated from them, a few rounds: the vote of the matches for light and colour, each pixel's own
match for detail. Each level's matches seed the next finer one. A membrane correction along the hole's edge
takes out the light the patches bring along.

A line between two grounds that crosses the hole (a wall meeting the floor) is found first and carried straight
across it (layout.py): the coarsest level starts from the ground each target sees without crossing it, and the
patches on it copy along it, untouched by the search, down to the first level whose sources hold it.

Patches come only from the ground the hole lies on (sources.py), not from a distinct object near it. Under a
placed object, what it will hide is no source, no reference for the light, and not compared in the patch
distances. Only the search runs at reduced scale on a large hole; the finest levels copy full-resolution pixels
along the upsampled matches.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from pipelines.imageops import Box, blur_known
from pipelines.placement import layout, patchmatch
from pipelines.placement.sources import allowed_sources

RADIUS = 3  # patches of 7 x 7
MIN_MARGIN = 48  # surroundings read past the mask's box: at least this, else the box's long side
MAX_MARGIN = 384
SEARCH_PIXELS = 60_000  # hole pixels up to which a level gets the full search (random search, several passes)
COARSEST_SIDE = 24  # levels are halved until the hole's box fits this (or the window gets too small)
EM_PASSES = 3  # search + vote rounds per searched level (2 is 20 % faster; the fill beside a placed object worse)
SEARCH_ITERATIONS = 2  # PatchMatch passes per round
DETAIL_SIGMA = 1.5  # below this scale the centre copy gives the detail, above it the vote
SEAM_SIGMA = 1.5  # the light on either side of the hole's edge is compared over this scale (wider reaches past edges)
LINE_DETAIL = 2  # the lines crossing the hole are found this many levels finer than the coarsest
MIN_ALONG = 0.9  # lines are pinned down to the first level where this share of their patches find a source on them
VOTE_SAMPLE = 7  # the vote's spread of costs is read from every this-many-th target


def surroundings(box: Box) -> int:
    """How far past the hole's box the fill reads the scene for its patches."""
    left, top, right, bottom = box
    return int(min(MAX_MARGIN, max(MIN_MARGIN, max(right - left, bottom - top))))


def remove_content(
    scene: np.ndarray, mask: np.ndarray, box: Box, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """`scene` (float RGB) with the pixels under `mask` replaced by a fill from their surroundings; the others
    untouched. `box` bounds the region the fill reads around (the mask's box, or a larger one it lies in);
    `exclude` marks pixels no patch may come from (old content a placed object will hide)."""
    left, top, right, bottom = _with_margin(box, scene.shape, surroundings(box))
    region = np.ascontiguousarray(scene[top:bottom, left:right], dtype=np.float32)
    hole = np.ascontiguousarray(mask[top:bottom, left:right], dtype=bool)
    barred = None if exclude is None else exclude[top:bottom, left:right]
    out = scene.copy()
    if hole.any():
        out[top:bottom, left:right] = np.where(hole[..., None], fill_hole(region, hole, seed, barred), region)
    return out


def fill_hole(image: np.ndarray, hole: np.ndarray, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """`image` (float32 RGB) with `hole` filled, coarse to fine; no patch from `exclude` (nor its light)."""
    barred = np.zeros_like(hole) if exclude is None else exclude
    allowed = allowed_sources(image, hole, barred) & ~barred
    levels = []
    for picture, gap in _pyramid(image, hole):  # down to the coarsest level that still has patches to copy
        source = _sources(gap, _resized(allowed, gap.shape))
        if not source.any():
            break
        unseen = np.ascontiguousarray(_shrunk(barred, gap.shape) & ~gap)
        levels.append((picture, gap, source, unseen))
    if not levels:  # nothing around the hole to copy from: a smooth guess from what is there
        return pull_push(image, hole | barred)
    found, finer = _continued_lines(levels)
    pinned = bool(found)  # the levels from the coarsest down to the first whose sources hold the lines
    previous = None
    for level in reversed(range(len(levels))):
        picture, gap, source, unseen = levels[level]
        targets, is_target = _targets(gap)
        lines = [((a + 0.5) / 2.0 ** (level - finer) - 0.5, (b + 0.5) / 2.0 ** (level - finer) - 0.5) for a, b in found]
        if previous is None and lines:  # near the ground each target sees, not across a line crossing the hole
            nnf = layout.visible_nnf(source, targets, lines, 2 * RADIUS + 1, seed)
        elif previous is None:  # random matches near each target: the texture beside it, not a smooth guess
            nnf = patchmatch.nearby_nnf(source, targets, _anchors(source), 2 * RADIUS + 1, seed)
        else:
            nnf = patchmatch.upsample_nnf(previous[0], previous[1], source, targets, seed + level)
        searched_targets = targets
        if pinned:  # the patches on a line copy along it, and the search leaves them
            kept, share = layout.along_lines(source, targets, lines, 2 * RADIUS + 1, nnf)
            searched_targets = np.ascontiguousarray(targets[~kept[targets[:, 0], targets[:, 1]]])
            pinned = share < MIN_ALONG and level > finer
        # The hole still holds what is removed: this first estimate weighs the matches alike.
        estimate = _reestimate(picture, gap, nnf, np.zeros(gap.shape, np.float32), is_target)
        searched = int(gap.sum()) <= SEARCH_PIXELS
        for round_ in range(EM_PASSES if searched else 1):
            cost = np.zeros(gap.shape, np.float32)
            iterations = SEARCH_ITERATIONS if searched else 1
            patchmatch.search(
                estimate, unseen, source, nnf, cost, searched_targets, RADIUS, iterations, searched, seed + round_
            )
            estimate = _reestimate(estimate, gap, nnf, cost, is_target)
        previous = (nnf, is_target)
    box = _around(hole, int(3 * SEAM_SIGMA) + 1)
    out = image.copy()
    out[box] = seamless(image[box], hole[box], estimate[box], barred[box])
    return out


def seamless(image: np.ndarray, hole: np.ndarray, filled: np.ndarray, barred: np.ndarray) -> np.ndarray:
    """`filled` with a smooth correction so its light meets the surroundings' at the hole's edge: the patches
    bring their own shading (a floor copied from its sunlit part into the shadow), and the mismatch along the
    edge, interpolated across the hole, takes it out (membrane cloning). `barred` pixels (old content a placed
    object will hide) are no reference for the light."""

    def local_mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        return blur_known(values, where, SEAM_SIGMA)[0]

    known = ~hole & ~barred
    band = hole & ~cv2.erode(hole.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    band &= cv2.dilate(known.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # next to the scene
    mismatch = local_mean(image, known) - local_mean(filled, hole)
    correction = pull_push(np.where(band[..., None], mismatch, 0).astype(np.float32), ~band)
    return np.where(hole[..., None], filled + correction, image).astype(np.float32)


def _reestimate(picture, gap, nnf, cost, is_target) -> np.ndarray:
    """The hole anew from the matches: the vote's low frequencies (smooth, no seams) with the detail of each
    pixel's own match's centre (the vote alone blurs, and a blurred estimate then matches the flattest patches
    of the surroundings, level after level). Blurs run on the hole's box only."""
    voted, sharp = picture.copy(), picture.copy()
    patchmatch.vote(picture, gap, nnf, _weights(cost, is_target), RADIUS, voted)
    patchmatch.copy_centres(picture, gap, nnf, sharp)
    box = _around(gap, int(3 * DETAIL_SIGMA) + 1)
    smooth = cv2.GaussianBlur(voted[box], (0, 0), DETAIL_SIGMA)
    detail = sharp[box] - cv2.GaussianBlur(sharp[box], (0, 0), DETAIL_SIGMA)
    out = picture.copy()
    out[box] = np.where(gap[box][..., None], smooth + detail, picture[box])
    return out


def _continued_lines(levels) -> tuple[list, int]:
    """The lines crossing the hole (layout.py) and the level they were found on, LINE_DETAIL levels finer than
    the coarsest: a line's place to a fraction of a coarsest pixel, and a ring still pixels wide past a hole
    near the image's border."""
    finer = max(0, len(levels) - 1 - LINE_DETAIL)
    picture, gap, _, unseen = levels[finer]
    return layout.continued_lines(picture, gap, unseen), finer


def _weights(cost: np.ndarray, is_target: np.ndarray) -> np.ndarray:
    """Each target's say in the vote: exp(-cost / 2 sigma^2), sigma^2 the matches' 75th-percentile cost
    (Wexler et al.); 0 off the targets."""
    matched = cost[is_target][::VOTE_SAMPLE]
    sigma2 = max(float(np.percentile(matched, 75)), 1e-3) if matched.size else 1.0
    return np.where(is_target, np.exp(-cost / (2.0 * sigma2)), 0.0).astype(np.float32)


def _around(gap: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The hole's bounding box grown by `margin`, as slices."""
    rows, cols = np.flatnonzero(gap.any(axis=1)), np.flatnonzero(gap.any(axis=0))
    height, width = gap.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + margin + 1)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + margin + 1)),
    )


def _anchors(source: np.ndarray) -> np.ndarray:
    """For every pixel, the nearest allowed source centre (y, x)."""
    _, (rows, cols) = ndimage.distance_transform_edt(~source, return_indices=True)
    return np.ascontiguousarray(np.stack([rows, cols], axis=-1).astype(np.int32))


def _pyramid(image: np.ndarray, hole: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, hole) per level, finest first; a coarse pixel is hole if any of its fine pixels is."""
    levels = [(image, hole)]
    while True:
        picture, gap = levels[-1]
        rows, cols = np.flatnonzero(gap.any(axis=1)), np.flatnonzero(gap.any(axis=0))
        side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        height, width = gap.shape
        if side <= COARSEST_SIDE or min(height, width) < 8 * (2 * RADIUS + 1):
            return levels
        size = ((width + 1) // 2, (height + 1) // 2)
        smaller = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        smaller_gap = cv2.resize(gap.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
        levels.append((smaller, smaller_gap))


def _sources(gap: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Patch centres a match may take: the whole patch inside the window, outside the hole, in allowed ground."""
    kernel = np.ones((2 * RADIUS + 1, 2 * RADIUS + 1), np.uint8)
    clear = cv2.erode((~gap & allowed).astype(np.uint8), kernel, borderValue=0).astype(bool)
    return np.ascontiguousarray(clear)


def _targets(gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.ones((2 * RADIUS + 1, 2 * RADIUS + 1), np.uint8)
    is_target = cv2.dilate(gap.astype(np.uint8), kernel).astype(bool)
    return np.argwhere(is_target).astype(np.int32), is_target


def _shrunk(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`mask` at a pyramid level's size: a coarse pixel is in it if any of its fine pixels is."""
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA) > 0


def _resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def pull_push(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`image` with `hole` pixels interpolated from the others over a weighted pyramid (known pixels unchanged)."""
    weight = (~hole).astype(np.float32)
    if not weight.any():
        return image
    levels = [(image * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 1 and (levels[-1][1] <= 0).any():
        colour, known = levels[-1]
        levels.append((cv2.pyrDown(colour), cv2.pyrDown(known)))
    colour, known = levels[-1]
    estimate = colour / np.maximum(known, 1e-6)[..., None]
    for colour, known in reversed(levels[:-1]):
        estimate = cv2.resize(estimate, (known.shape[1], known.shape[0]), interpolation=cv2.INTER_LINEAR)
        confidence = np.clip(known, 0.0, 1.0)[..., None]
        estimate = colour / np.maximum(known, 1e-6)[..., None] * confidence + estimate * (1.0 - confidence)
    return np.where(hole[..., None], estimate, image).astype(np.float32)


def _with_margin(box: Box, shape: tuple[int, ...], margin: int) -> Box:
    left, top, right, bottom = box
    return max(0, left - margin), max(0, top - margin), min(shape[1], right + margin), min(shape[0], bottom + margin)
