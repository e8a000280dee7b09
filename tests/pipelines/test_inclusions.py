"""Inclusions in garments: a badge inside a pattern mask takes the pattern with the fabric's shading around it,
not a pale patch of the pattern; the garment's own light stays."""

import numpy as np
from PIL import Image, ImageDraw

from pipelines import SwapJob
from pipelines.imageops import LUMA
from pipelines.placement import place
from pipelines.placement.inclusions import clamp_inclusions
from tests.conftest import rect_mask

SIZE = (240, 180)
GARMENT = (20, 20, 219, 159)  # the mask's box, inclusive
BADGE = (slice(78, 102), slice(105, 145))  # rows, columns: 24 x 40 px, 3.4 % of the mask


def garment_with_badge(badge: float | None = 235.0) -> Image.Image:
    """Blue fabric lit from the left (its light falls to half across it), with a bright badge sewn on."""
    height, width = SIZE[1], SIZE[0]
    light = np.linspace(1.3, 0.65, width, dtype=np.float32)[None, :, None]
    fabric = np.broadcast_to(np.array([50, 70, 150], np.float32) * light, (height, width, 3)).copy()
    fabric += np.random.default_rng(0).normal(0, 2, fabric.shape)
    if badge is not None:
        fabric[BADGE] = badge
    return Image.fromarray(np.clip(fabric, 0, 255).astype(np.uint8), "RGB")


def checks() -> Image.Image:
    tile = Image.new("RGB", (16, 16), (200, 120, 40))
    ImageDraw.Draw(tile).rectangle((0, 0, 7, 7), fill=(150, 80, 30))
    return tile


def swapped(scene: Image.Image) -> np.ndarray:
    job = SwapJob(
        main_image=scene,
        mask_image=rect_mask(SIZE, GARMENT),
        object_image=checks(),
        horizontal_repeat=12,
        vertical_repeat=9,
        growmask=3,
    )
    return np.asarray(place(job).image, dtype=np.float32) @ LUMA


def around_badge(luminance: np.ndarray) -> float:
    """The mean over the badge's own columns, above and below it: the same light as the badge's."""
    rows, cols = BADGE
    return float(
        np.concatenate(
            [luminance[rows.start - 24 : rows.start - 8, cols], luminance[rows.stop + 8 : rows.stop + 24, cols]]
        ).mean()
    )


def test_a_badge_takes_the_pattern_with_the_fabrics_shading_and_the_light_stays():
    out = swapped(garment_with_badge())
    badge = float(out[BADGE].mean())
    assert abs(badge - around_badge(out)) < 8  # a pale patch stands ~40 grey levels above
    plain = swapped(garment_with_badge(badge=None))
    assert abs(badge - float(plain[BADGE].mean())) < 8  # as if the badge were not there
    left, right = out[30:150, 30:70].mean(), out[30:150, 170:210].mean()
    assert left > 1.4 * right  # the light falling across the garment is still there


def test_folds_and_the_large_scale_light_are_not_inclusions():
    height, width = 120, 160
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    light = np.clip(0.5 + xs / width, 0.2, 2.5)  # large-scale: a factor of three across
    light *= 1 - 0.6 * np.exp(-(((xs - 80) / 3) ** 2)) * ((ys > 20) & (ys < 100))  # a deep, narrow fold
    mask = np.ones((height, width), bool)
    assert np.array_equal(clamp_inclusions(light, mask, spread=1.5), light)
