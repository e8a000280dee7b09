"""The compiled inner loops of the exemplar fill (fill.py): PatchMatch's search and the patch vote.

PatchMatch (Barnes et al. 2009) finds, for every target patch (a patch that overlaps the hole), a source patch
(wholly outside the hole, in the allowed surroundings) of small sum of squared differences: random guesses,
then each patch tries its scan-order neighbours' matches shifted by one (propagation) and random ones in a
shrinking window around its best (random search). The vote (Wexler et al. 2007) then sets each hole pixel to
the weighted mean of what the patches covering it copy there. These loops touch every pixel of every patch
many times over and do not vectorise (propagation is sequential), hence numba.

Arrays: `image` float32 (H, W, 3); `nnf` int32 (H, W, 2), a target's source centre (y, x); `cost` float32
(H, W); `source` bool (H, W), the centres a match may take; `targets` int32 (N, 2) in raster order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

INF = np.float32(3.0e38)


@njit(cache=True, nogil=True)
def patch_distance(image, unseen, ty, tx, sy, sx, radius, limit):
    """Sum of squared differences of the patches at (ty, tx) and (sy, sx); stops once above `limit`. Target pixels
    outside the image, or `unseen` (old content a placed object will hide: nothing to match), are skipped
    (sources lie wholly inside and in view)."""
    height, width = image.shape[0], image.shape[1]
    total = 0.0
    for dy in range(-radius, radius + 1):
        y = ty + dy
        if y < 0 or y >= height:
            continue
        for dx in range(-radius, radius + 1):
            x = tx + dx
            if x < 0 or x >= width or unseen[y, x]:
                continue
            for c in range(3):
                difference = image[y, x, c] - image[sy + dy, sx + dx, c]
                total += difference * difference
        if total > limit:
            return total
    return total


@njit(cache=True, nogil=True)
def search(image, unseen, source, nnf, cost, targets, radius, iterations, random_search, seed):
    """Improve `nnf` and `cost` in place: `iterations` PatchMatch passes, alternating scan direction."""
    np.random.seed(seed)
    height, width = source.shape
    is_target = np.zeros((height, width), dtype=np.bool_)
    for i in range(targets.shape[0]):
        is_target[targets[i, 0], targets[i, 1]] = True
    for i in range(targets.shape[0]):
        y, x = targets[i, 0], targets[i, 1]
        cost[y, x] = patch_distance(image, unseen, y, x, nnf[y, x, 0], nnf[y, x, 1], radius, INF)
    count = targets.shape[0]
    for iteration in range(iterations):
        step = 1 if iteration % 2 == 0 else -1
        for k in range(count):
            i = k if step == 1 else count - 1 - k
            y, x = targets[i, 0], targets[i, 1]
            best_y, best_x, best = nnf[y, x, 0], nnf[y, x, 1], cost[y, x]
            for n in range(2):  # the neighbours already visited in this scan: left/right, then above/below
                ny, nx = (y, x - step) if n == 0 else (y - step, x)
                if ny < 0 or ny >= height or nx < 0 or nx >= width or not is_target[ny, nx]:
                    continue
                cy, cx = nnf[ny, nx, 0] + y - ny, nnf[ny, nx, 1] + x - nx
                if 0 <= cy < height and 0 <= cx < width and source[cy, cx] and (cy != best_y or cx != best_x):
                    distance = patch_distance(image, unseen, y, x, cy, cx, radius, best)
                    if distance < best:
                        best_y, best_x, best = cy, cx, distance
            reach = max(height, width) if random_search else 0
            while reach >= 1:
                cy = best_y + np.random.randint(-reach, reach + 1)
                cx = best_x + np.random.randint(-reach, reach + 1)
                if 0 <= cy < height and 0 <= cx < width and source[cy, cx]:
                    distance = patch_distance(image, unseen, y, x, cy, cx, radius, best)
                    if distance < best:
                        best_y, best_x, best = cy, cx, distance
                reach //= 2
            nnf[y, x, 0], nnf[y, x, 1], cost[y, x] = best_y, best_x, best


@njit(cache=True, nogil=True)
def vote(image, hole, nnf, weight, radius, out):
    """`out` at every hole pixel: the mean, weighted by `weight` (per target; 0 where none), of the pixels the
    target patches covering it copy there; elsewhere untouched."""
    height, width = hole.shape
    for y in range(height):
        for x in range(width):
            if not hole[y, x]:
                continue
            acc0 = acc1 = acc2 = 0.0
            total = 0.0
            for dy in range(-radius, radius + 1):
                ty = y + dy
                if ty < 0 or ty >= height:
                    continue
                for dx in range(-radius, radius + 1):
                    tx = x + dx
                    if tx < 0 or tx >= width or weight[ty, tx] <= 0.0:
                        continue
                    w = weight[ty, tx]
                    sy, sx = nnf[ty, tx, 0] - dy, nnf[ty, tx, 1] - dx
                    acc0 += w * image[sy, sx, 0]
                    acc1 += w * image[sy, sx, 1]
                    acc2 += w * image[sy, sx, 2]
                    total += w
            if total > 0:
                out[y, x, 0], out[y, x, 1], out[y, x, 2] = acc0 / total, acc1 / total, acc2 / total


@njit(cache=True, nogil=True)
def copy_centres(image, hole, nnf, out):
    """`out` at every hole pixel: the centre pixel of its own best match (sharp, where the vote averages)."""
    height, width = hole.shape
    for y in range(height):
        for x in range(width):
            if hole[y, x]:
                for c in range(3):
                    out[y, x, c] = image[nnf[y, x, 0], nnf[y, x, 1], c]


@njit(cache=True, nogil=True)
def upsample_nnf(coarse, coarse_targets, source, targets, seed):
    """A finer level's field from a coarser one: each target takes twice its parent's match plus its own
    offset within the parent; where that is not an allowed source, a random allowed one."""
    np.random.seed(seed)
    height, width = source.shape
    nnf = np.zeros((height, width, 2), dtype=np.int32)
    sources = np.argwhere(source)
    coarse_height, coarse_width = coarse_targets.shape
    for i in range(targets.shape[0]):
        y, x = targets[i, 0], targets[i, 1]
        py, px = min(y // 2, coarse_height - 1), min(x // 2, coarse_width - 1)
        cy, cx = -1, -1
        if coarse_targets[py, px]:
            cy, cx = 2 * coarse[py, px, 0] + y - 2 * py, 2 * coarse[py, px, 1] + x - 2 * px
        if not (0 <= cy < height and 0 <= cx < width and source[cy, cx]):
            pick = sources[np.random.randint(0, sources.shape[0])]
            cy, cx = pick[0], pick[1]
        nnf[y, x, 0], nnf[y, x, 1] = cy, cx
    return nnf


@njit(cache=True, nogil=True)
def nearby_nnf(source, targets, anchors, reach, seed):
    """A first field: each target matched to a random allowed source near its anchor (the known pixel nearest
    to it), the reach doubling until one is found. Sky starts from the sky beside it, a floor from the floor."""
    np.random.seed(seed)
    height, width = source.shape
    nnf = np.zeros((height, width, 2), dtype=np.int32)
    sources = np.argwhere(source)
    for i in range(targets.shape[0]):
        y, x = targets[i, 0], targets[i, 1]
        ay, ax = anchors[y, x, 0], anchors[y, x, 1]
        found = False
        radius = reach
        while not found and radius < 2 * max(height, width):
            for _ in range(16):
                cy = ay + np.random.randint(-radius, radius + 1)
                cx = ax + np.random.randint(-radius, radius + 1)
                if 0 <= cy < height and 0 <= cx < width and source[cy, cx]:
                    nnf[y, x, 0], nnf[y, x, 1] = cy, cx
                    found = True
                    break
            radius *= 2
        if not found:
            pick = sources[np.random.randint(0, sources.shape[0])]
            nnf[y, x, 0], nnf[y, x, 1] = pick[0], pick[1]
    return nnf
