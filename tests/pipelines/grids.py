"""Reading a grid of tiles back from pixels: a red disk per tile, found as connected components."""

import itertools

import cv2
import numpy as np
from PIL import Image, ImageDraw

from pipelines.placement.patterns import cell_edges


def disk_tile(size=(60, 60)) -> Image.Image:
    """A red disk on white: one component per tile, its centre the tile's."""
    tile = Image.new("RGB", size, (255, 255, 255))
    width, height = size
    ImageDraw.Draw(tile).ellipse((width * 0.2, height * 0.2, width * 0.8 - 1, height * 0.8 - 1), fill=(220, 20, 20))
    return tile


def red_components(image: np.ndarray) -> np.ndarray:
    """The centroids (x, y) of the red blobs in an RGB array (shading may lighten or darken them)."""
    rgb = image.astype(np.int16)
    red = rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2]) > 100
    _, _, _, centroids = cv2.connectedComponentsWithStats(red.astype(np.uint8), connectivity=4)
    return centroids[1:]


def cell_centres(box: tuple[int, int, int, int], horizontal: int, vertical: int) -> np.ndarray:
    """The (x, y) centre of every cell of the h x v grid over `box`, row by row."""
    left, top, right, bottom = box
    xs = [left + (a + b - 1) / 2 for a, b in itertools.pairwise(cell_edges(right - left, horizontal))]
    ys = [top + (a + b - 1) / 2 for a, b in itertools.pairwise(cell_edges(bottom - top, vertical))]
    return np.array([(x, y) for y in ys for x in xs])


def assert_grid(centroids: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    """As many blobs as cells, and each cell's centre within `tolerance` of its own blob."""
    assert len(centroids) == len(expected), f"{len(centroids)} tiles, expected {len(expected)}"
    distances = np.linalg.norm(expected[:, None, :] - centroids[None, :, :], axis=-1)
    nearest = distances.argmin(axis=1)
    assert len(set(nearest.tolist())) == len(expected), "two cells share a blob"
    assert distances.min(axis=1).max() <= tolerance
