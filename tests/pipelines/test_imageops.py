import numpy as np
import pytest
from PIL import Image

from pipelines.errors import InvalidInput
from pipelines.imageops import (
    feather_alpha,
    feathered_paste,
    fit_centered,
    grow_mask,
    mask_box,
    normalize_mask,
)


def single_pixel(shape=(41, 41), at=(20, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[at] = True
    return mask


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 13, 20])
def test_growmask_is_a_disk_of_exactly_that_radius(radius):
    grown = grow_mask(single_pixel(), radius)
    ys, xs = np.mgrid[0:41, 0:41]
    expected = (ys - 20) ** 2 + (xs - 20) ** 2 <= radius**2
    assert np.array_equal(grown, expected)


def test_growmask_clips_at_the_image_border():
    grown = grow_mask(single_pixel((10, 10), (0, 0)), 3)
    ys, xs = np.mgrid[0:10, 0:10]
    assert np.array_equal(grown, ys**2 + xs**2 <= 9)


def test_growmask_of_an_empty_mask_stays_empty():
    assert not grow_mask(np.zeros((8, 8), dtype=bool), 5).any()


def test_mask_from_luminance_with_threshold():
    gray = Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8), "L")
    assert normalize_mask(gray, (4, 1)).tolist() == [[False, False, True, True]]


def test_mask_from_rgb_uses_luminance():
    rgb = Image.new("RGB", (2, 1), (255, 255, 255))
    rgb.putpixel((1, 0), (0, 0, 0))
    assert normalize_mask(rgb, (2, 1)).tolist() == [[True, False]]


def test_mask_from_rgba_uses_alpha_when_alpha_varies():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 255))  # black but opaque: alpha says replace
    rgba.putpixel((1, 0), (255, 255, 255, 0))  # white but transparent: keep
    assert normalize_mask(rgba, (2, 1)).tolist() == [[True, False]]


def test_fully_opaque_rgba_mask_falls_back_to_luminance():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 255))
    assert normalize_mask(rgba, (2, 1)).tolist() == [[True, False]]


def test_16_bit_mask_is_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 20000, 40000, 65535]], dtype=np.uint16))
    assert normalize_mask(deep, (4, 1)).tolist() == [[False, False, True, True]]


def test_mask_is_resized_nearest_neighbour_to_the_main_image():
    small = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), "L")
    big = normalize_mask(small, (4, 4))
    assert big.tolist() == [[False, False, True, True]] * 2 + [[True, True, False, False]] * 2


def test_mask_box_with_margin_is_clamped():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 10:12] = True
    assert mask_box(mask, margin=4) == (6, 0, 16, 9)


def test_mask_box_of_empty_mask_names_the_field():
    with pytest.raises(InvalidInput) as info:
        mask_box(np.zeros((4, 4), dtype=bool))
    assert info.value.field == "mask_image"


def test_fit_centered_keeps_aspect_ratio():
    fitted, box = fit_centered(Image.new("RGB", (20, 10)), (40, 40))
    assert fitted.size == (40, 20) and box == (0, 10, 40, 30)


def test_feather_ramps_from_the_edge_inwards():
    mask = np.zeros((1, 11), dtype=bool)
    mask[0, 1:10] = True
    alpha = feather_alpha(mask, 3)
    assert alpha[0, 0] == 0 and alpha[0, 1] == pytest.approx(1 / 3) and alpha[0, 5] == 1


def test_feathered_paste_leaves_pixels_outside_the_mask_untouched():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB")
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 8:30] = True
    box = mask_box(mask)
    patch = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), (255, 0, 0))
    out = np.asarray(feathered_paste(base, patch, box, mask, feather=4))
    assert np.array_equal(out[~mask], np.asarray(base)[~mask])
    assert (out[12, 18] == [255, 0, 0]).all()  # deep inside: fully the patch
    assert not (out[5, 18] == [255, 0, 0]).all()  # on the edge: blended


def test_euclidean_distance_is_exact():
    """OpenCV's exact transform gives scipy's Euclidean distances (grow_mask's disks depend on it)."""
    from scipy import ndimage

    from pipelines.imageops import euclidean_distance

    rng = np.random.default_rng(4)
    region = rng.random((180, 240)) > 0.002
    region[60:90, 100:160] = False
    assert np.abs(euclidean_distance(region) - ndimage.distance_transform_edt(region)).max() < 1e-4


def test_feather_of_a_mask_filling_its_window_stays_opaque():
    """A mask that fills the whole image has no inner edge to feather from: every pixel is fully opaque."""
    assert feather_alpha(np.ones((20, 30), dtype=bool), 5).min() == 1.0
