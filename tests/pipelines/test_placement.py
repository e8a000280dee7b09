"""The placement stage: cut-out, fill, fitting, pattern tiling and shading, on images built to show each."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import SwapJob
from pipelines.imageops import grow_mask, normalize_mask
from pipelines.placement import cut_out, place, resolve_mode
from pipelines.placement.fill import remove_content
from pipelines.placement.objects import fit_into
from pipelines.placement.patterns import shading, tile_grid
from tests.conftest import noise_image, rect_mask


def product_on_white(body=(150, 60, 40), size=(160, 140), shadow=True, seed=0) -> Image.Image:
    """A shaded ellipse 'product' on a near-white seamless backdrop with a soft cast shadow and grain."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([250 - 8 * ys / height] * 3, axis=-1)
    if shadow:
        cast = np.exp(-(((xs - 85) / 45) ** 2 + ((ys - 112) / 8) ** 2))
        image *= 1 - 0.3 * cast[..., None]
    inside = ((xs - 80) / 45) ** 2 + ((ys - 70) / 40) ** 2 <= 1
    light = 0.7 + 0.3 * (1 - (xs - 60) / width)
    image[inside] = (np.array(body, np.float32) * light[..., None])[inside]
    image += np.random.default_rng(seed).normal(0, 1.5, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def alpha_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0


def test_an_alpha_channel_is_the_cut_out_trimmed_to_it():
    obj = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    ImageDraw.Draw(obj).rectangle((10, 5, 29, 24), fill=(200, 10, 10, 255))
    out = cut_out(obj)
    assert out.size == (20, 20) and alpha_of(out).min() == 1.0


@pytest.mark.parametrize("body", [(150, 60, 40), (120, 120, 120)])
def test_a_plain_backdrop_and_its_cast_shadow_are_removed_but_not_a_grey_product(body):
    out = cut_out(product_on_white(body))
    alpha = alpha_of(out)
    assert out.size[0] <= 95 and out.size[1] <= 88  # trimmed to the ellipse (91 x 81), not the shadow (to y 125)
    h, w = alpha.shape
    assert alpha[h // 2 - 10 : h // 2 + 10, w // 2 - 10 : w // 2 + 10].min() > 0.95  # the body stays, grey or not
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0


def test_without_alpha_or_backdrop_grabcut_separates_a_centred_object():
    scene = np.asarray(noise_image((120, 100), seed=4), dtype=np.float32) * 0.5 + 60
    ImageDraw_ = Image.fromarray(scene.astype(np.uint8))
    ImageDraw.Draw(ImageDraw_).ellipse((35, 25, 85, 75), fill=(240, 220, 30))
    alpha = alpha_of(cut_out(ImageDraw_))
    assert alpha.mean() < 0.95  # not the whole image
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] > 0.9


def test_removing_content_replaces_it_with_the_surroundings_and_touches_nothing_else():
    ys, xs = np.mgrid[0:80, 0:100].astype(np.float32)
    scene = np.stack([40 + xs, 80 + 0 * xs, 200 - ys], axis=-1)
    mask = np.zeros((80, 100), bool)
    mask[25:55, 30:70] = True
    scene_with_object = scene.copy()
    scene_with_object[mask] = (255, 0, 0)
    filled = remove_content(scene_with_object, mask, (30, 25, 70, 55), seed=0)
    assert np.array_equal(filled[~mask], scene_with_object[~mask])
    assert np.abs(filled[mask] - scene[mask]).mean() < 12  # close to what was behind, no red left


def test_an_object_sits_bottom_centre_and_inside_the_mask_shape():
    region = np.zeros((100, 160), bool)
    yy, xx = np.mgrid[0:100, 0:160]
    region[((xx - 80) / 80) ** 2 + ((yy - 50) / 50) ** 2 <= 1] = True  # an ellipse
    obj = Image.new("RGBA", (60, 60), (10, 200, 10, 255))
    _, alpha = fit_into(obj, region)
    rows, cols = np.flatnonzero(alpha.max(axis=1) > 0.5), np.flatnonzero(alpha.max(axis=0) > 0.5)
    assert abs((cols[0] + cols[-1]) / 2 - 79.5) <= 1.5  # centred
    assert (alpha * ~region).sum() <= 0.03 * alpha.sum() + 1  # corners kept inside the ellipse
    assert rows[-1] > 70  # as low as the shape allows


def test_pattern_tiles_cover_the_box_with_the_asked_repeats():
    tile = Image.new("RGB", (20, 10), (255, 255, 255))
    ImageDraw.Draw(tile).rectangle((0, 0, 9, 9), fill=(0, 0, 0))  # the left half dark
    tiled = tile_grid(tile, (200, 60), 4, 3)
    assert tiled.shape == (60, 200, 3)
    dark = tiled[..., 0] < 128
    cell = np.zeros((20, 50), bool)
    cell[:, :25] = True  # each cell 200 / 4 by 60 / 3, the tile stretched into it
    assert np.array_equal(dark, np.tile(cell, (3, 4)))


def test_shading_follows_the_original_light():
    region = np.full((60, 80, 3), 120.0, np.float32)
    region[:, 40:] *= 0.5  # the right half is in shadow (a fold)
    shade = shading(region, np.ones((60, 80), bool))
    assert shade[30, 70] < 0.7 * shade[30, 10]


def garment_job(**overrides) -> SwapJob:
    ys, xs = np.mgrid[0:90, 0:120].astype(np.float32)
    folds = 150 + 60 * np.sin(xs / 9.0)
    scene = np.stack([folds * 0.9, folds * 0.5, folds * 0.3], axis=-1)
    pattern = Image.new("RGB", (16, 16), (20, 60, 200))
    ImageDraw.Draw(pattern).rectangle((0, 0, 7, 7), fill=(240, 240, 60))
    values = dict(
        main_image=Image.fromarray(scene.astype(np.uint8)),
        mask_image=rect_mask((120, 90), (20, 15, 99, 74)),
        object_image=pattern,
        horizontal_repeat=5,
        vertical_repeat=4,
        growmask=3,
    )
    values.update(overrides)
    return SwapJob(**values)


def test_a_pattern_covers_the_whole_mask_and_keeps_the_folds():
    from pipelines.evaluation import metrics

    job = garment_job()
    out, original = np.asarray(place(job).image), np.asarray(job.main_image)
    mask = normalize_mask(job.mask_image, job.main_image.size)
    assert metrics.pattern_coverage(out, original, mask) == 1.0
    assert metrics.shading_kept(out, original, mask) > 0.6
    assert metrics.pattern_colour_carried(out, original, mask, np.asarray(job.object_image)) > 0.8


@pytest.mark.parametrize("mode", ["object", "pattern"])
def test_pixels_outside_the_grown_mask_are_identical(mode):
    job = garment_job(mode=mode, object_image=product_on_white())
    out = np.asarray(place(job).image)
    grown = grow_mask(normalize_mask(job.mask_image, job.main_image.size), job.growmask)
    assert np.array_equal(out[~grown], np.asarray(job.main_image)[~grown])


def test_subject_strength_is_the_placement_opacity():
    full = np.asarray(place(garment_job()).image, dtype=float)
    half = np.asarray(place(garment_job(subject_strength=0.5)).image, dtype=float)
    none = np.asarray(place(garment_job(subject_strength=0.0)).image)
    original = np.asarray(garment_job().main_image, dtype=float)
    assert np.array_equal(none, original.astype(np.uint8))
    assert np.abs(half - (original + full) / 2).max() <= 1.0


def test_auto_mode_is_pattern_when_a_repeat_is_above_one():
    assert resolve_mode(garment_job()) == "pattern"
    assert resolve_mode(garment_job(horizontal_repeat=1, vertical_repeat=1)) == "object"
    assert resolve_mode(garment_job(mode="object")) == "object"


def test_an_unknown_mode_is_a_clear_input_error():
    from pipelines import InvalidInput

    with pytest.raises(InvalidInput) as info:
        garment_job(mode="sideways")
    assert info.value.field == "mode"


def test_the_pattern_keeps_its_own_mean_colour_under_heavy_shading():
    from pipelines.evaluation import metrics

    ys, xs = np.mgrid[0:90, 0:120].astype(np.float32)
    glossy = 40 + 200 * (np.sin(xs / 6.0) > 0.6) + 10 * np.cos(ys / 5.0)  # mostly dark, with bright highlights
    scene = np.clip(np.stack([glossy, glossy * 0.3, glossy * 0.3], axis=-1), 0, 255).astype(np.uint8)
    job = garment_job(main_image=Image.fromarray(scene))
    out, original = np.asarray(place(job).image), np.asarray(job.main_image)
    mask = normalize_mask(job.mask_image, job.main_image.size)
    assert metrics.pattern_colour_carried(out, original, mask, np.asarray(job.object_image)) > 0.95
    assert metrics.shading_kept(out, original, mask) > 0.6


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (20000, 2), (2, 3000)])
def test_objects_too_thin_to_cut_out_are_used_whole(size):
    """No backdrop can be told apart in a few pixels: the whole image is the object (was a numpy or OpenCV error)."""
    cut = cut_out(Image.new("RGB", size, (200, 10, 10)))
    assert cut.size == size and np.asarray(cut.getchannel("A")).min() == 255
    job = SwapJob(
        main_image=noise_image((200, 150), seed=2),
        mask_image=rect_mask((200, 150), (60, 40, 140, 120)),
        object_image=Image.new("RGB", size, (200, 10, 10)),
    )
    assert place(job).image.size == (200, 150)


def test_a_plain_swatch_is_all_object():
    """An image that is all backdrop (a flat colour or a smooth gradient) has nothing to cut out: all of it is
    the object, not whatever GrabCut would split off."""
    ys, xs = np.mgrid[0:90, 0:120]
    gradient = np.stack([60 + xs, 120 + 0 * xs, 200 - ys], axis=-1).astype(np.uint8)
    for swatch in (Image.new("RGB", (120, 90), (30, 160, 60)), Image.fromarray(gradient, "RGB")):
        cut = cut_out(swatch)
        assert cut.size == swatch.size and np.asarray(cut.getchannel("A")).min() == 255
        assert np.array_equal(np.asarray(cut.convert("RGB")), np.asarray(swatch))


def test_the_backdrop_field_is_the_fitted_quadratic_everywhere():
    """The field is evaluated on a coarse grid and scaled up: it must still be the quadratic at every pixel."""
    from pipelines.placement.cutout import _border_strip, _fit_field

    height, width = 301, 457
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xs / (width - 1) - 0.5, ys / (height - 1) - 0.5
    exact = np.stack([200 + 30 * u - 20 * v + 40 * u * u, 180 - 25 * v * v + 10 * u * v, 150 + 5 * u], axis=-1)
    field = _fit_field(exact.astype(np.float32), _border_strip(height, width))
    # Within a grey level (the backdrop tolerance is 8 or more), the worst at the corners' outer half-cell.
    assert field.shape == exact.shape and np.abs(field - exact).max() < 1.0


def test_the_contact_shadow_is_the_blurred_ellipse_whatever_the_window():
    """The shadow is drawn and blurred in a window around it: the same as blurring the whole layer."""
    import cv2

    from pipelines.placement.objects import contact_shadow

    alpha = np.zeros((300, 260), np.float32)
    alpha[40:280, 60:200] = 1.0
    shadow = contact_shadow(alpha)
    whole = np.zeros_like(alpha)
    cv2.ellipse(whole, (130, 279), (84, 10), 0, 0, 360, 1.0, -1)
    assert np.abs(shadow - cv2.GaussianBlur(whole, (0, 0), 9.6)).max() < 1e-5
    assert shadow[279, 130] > 0.5 and shadow[:200].max() == 0.0


def test_placement_reads_only_a_window_around_the_mask():
    """What lies far from the mask cannot change the placed region (the stage works on a window)."""
    scene = np.asarray(noise_image((400, 300), seed=3)).copy()
    mask = rect_mask((400, 300), (150, 100, 250, 200))
    object_image = product_on_white()
    first = place(SwapJob(main_image=Image.fromarray(scene), mask_image=mask, object_image=object_image))
    scene[:, :20] = 0  # outside the box and the margin the fill reads (110 px: the grown box's long side)
    second = place(SwapJob(main_image=Image.fromarray(scene), mask_image=mask, object_image=object_image))
    box = first.box
    crop = (slice(box[1], box[3]), slice(box[0], box[2]))
    assert np.array_equal(np.asarray(first.image)[crop], np.asarray(second.image)[crop])
