import numpy as np
import pytest
from PIL import Image

from pipelines import CompositeEngine, InvalidInput, SwapJob
from pipelines.imageops import grow_mask, normalize_mask
from tests.conftest import noise_image, rect_mask


def job(**overrides) -> SwapJob:
    values = dict(
        main_image=noise_image((80, 60), seed=3),
        mask_image=rect_mask((80, 60), (20, 15, 50, 40)),
        object_image=Image.new("RGB", (10, 10), (0, 255, 0)),
        growmask=4,
    )
    values.update(overrides)
    return SwapJob(**values)


def test_pixels_outside_grown_mask_are_unchanged():
    j = job()
    out = np.asarray(CompositeEngine().swap(j))
    grown = grow_mask(normalize_mask(j.mask_image, j.main_image.size), j.growmask)
    assert np.array_equal(out[~grown], np.asarray(j.main_image)[~grown])
    assert not np.array_equal(out[grown], np.asarray(j.main_image)[grown])


def test_output_has_main_image_size_when_mask_size_differs():
    out = CompositeEngine().swap(job(mask_image=rect_mask((40, 30), (10, 7, 25, 20))))
    assert out.size == (80, 60) and out.mode == "RGB"


def test_same_job_gives_identical_pixels():
    assert CompositeEngine().swap(job()).tobytes() == CompositeEngine().swap(job()).tobytes()


def test_object_colour_lands_in_the_mask():
    out = np.asarray(CompositeEngine().swap(job(growmask=0)))
    assert out[27, 35, 1] > 200 and out[27, 35, 0] < 80  # green, as the object


def test_subject_strength_zero_leaves_the_scene_unchanged():
    j = job(subject_strength=0.0)
    assert np.array_equal(np.asarray(CompositeEngine().swap(j)), np.asarray(j.main_image))


def test_lower_fashion_strength_pulls_colours_towards_the_scene():
    j = job(growmask=0)
    scene_mean = np.asarray(j.main_image, dtype=float)[15:40, 20:50].mean(axis=(0, 1))
    kept = np.asarray(CompositeEngine().swap(j), dtype=float)[20:35, 25:45].mean(axis=(0, 1))
    pulled = np.asarray(CompositeEngine().swap(job(growmask=0, fashion_strength=0.0)), dtype=float)[20:35, 25:45].mean(
        axis=(0, 1)
    )
    assert np.abs(pulled - scene_mean).sum() < np.abs(kept - scene_mean).sum()


@pytest.mark.parametrize("alpha", [0, 8])
def test_a_job_with_an_object_that_shows_nothing_is_refused_naming_the_object(alpha):
    """The library refuses it as the server does: it would place nothing (a silent erase); mode=erase is for that."""
    with pytest.raises(InvalidInput, match="fully transparent") as info:
        job(object_image=Image.new("RGBA", (10, 10), (255, 0, 0, alpha)))
    assert info.value.field == "object_image"
    assert job(object_image=Image.new("RGBA", (10, 10), (255, 0, 0, 9))).object_image is not None


def test_empty_mask_is_a_clear_input_error():
    with pytest.raises(InvalidInput, match="selects no pixel") as info:
        CompositeEngine().swap(job(mask_image=Image.new("L", (80, 60), 0)))
    assert info.value.field == "mask_image"
