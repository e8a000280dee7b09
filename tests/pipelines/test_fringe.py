"""No fringe: an object cut from its backdrop shows no band of that backdrop's colour along its edge in the scene."""

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines import SwapJob
from pipelines.evaluation import metrics
from pipelines.placement import place
from pipelines.placement.fringe import tighten_matte
from tests.conftest import rect_mask

SCENE_SIZE = (240, 200)


def product_photo(backdrop: tuple[int, int, int], size=(400, 340), seed=0) -> Image.Image:
    """A shaded ellipse 'product' on a plain backdrop, photographed: the lens blurs its edge over a few pixels,
    mixing the body's colour with the backdrop's (the mixture a matte can count as opaque)."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[:] = backdrop
    inside = ((xs - width / 2) / (0.3 * width)) ** 2 + ((ys - height / 2) / (0.32 * height)) ** 2 <= 1
    light = 0.75 + 0.25 * (1 - xs / width)
    image[inside] = (np.array((150, 60, 40), np.float32) * light[..., None])[inside]
    image = cv2.GaussianBlur(image, (0, 0), 1.6)
    image += np.random.default_rng(seed).normal(0, 1.5, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def plain_scene(level: float, seed=1) -> Image.Image:
    """A near-flat scene with some texture and grain."""
    width, height = SCENE_SIZE
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = level + 6 * np.sin(xs / 7.0) + np.random.default_rng(seed).normal(0, 3, (height, width))
    return Image.fromarray(np.clip(np.stack([grey, grey * 0.95, grey * 1.05], -1), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("backdrop", "scene_level"),
    [((250, 250, 248), 35), ((8, 8, 10), 215)],
    ids=["white-backdrop-dark-scene", "black-backdrop-light-scene"],
)
def test_no_band_of_the_old_backdrop_survives_along_the_edge(backdrop, scene_level):
    obj = product_photo(backdrop)
    job = SwapJob(
        main_image=plain_scene(scene_level),
        mask_image=rect_mask(SCENE_SIZE, (40, 30, 199, 179)),
        object_image=obj,
        growmask=4,
    )
    placed = place(job)
    fringe = metrics.edge_fringe(
        np.asarray(placed.image), placed.coverage, metrics.backdrop_brightness(np.asarray(obj))
    )
    assert fringe <= 10.0


def test_a_light_rim_as_light_as_the_inside_nearby_is_kept():
    """A cup's white rim, a dark band under it, then its white inner wall: the rim is as light as the inside
    nearby, so it is the object's own; only an edge beyond both sides is peeled."""
    alpha = np.zeros((60, 80), np.float32)
    alpha[10:50, 10:70] = 1.0
    layer = np.full((60, 80, 3), 60.0, np.float32)
    layer[10:13] = 225.0  # a 3-px white rim along the top edge
    layer[18:30, 30:50] = 225.0  # the inner wall, past a 5-px dark band
    behind = np.full((60, 80, 3), 20.0, np.float32)
    tightened = tighten_matte(layer, alpha, behind)
    assert tightened[10:13, 32:48].min() > 0.9  # the rim over the white inside stays
    assert tightened[10:12, 10:25].max() < 0.1  # the same line over the dark body alone is a fringe
    assert np.array_equal(tightened[20:45, 20:60], alpha[20:45, 20:60])  # the inside is never touched
