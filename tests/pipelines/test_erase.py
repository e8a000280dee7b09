"""mode=erase on every engine: no object, what the grown mask covers removed, nothing outside it touched."""

import numpy as np
import pytest
from PIL import Image

from pipelines import CompositeEngine, InvalidInput, SwapJob, build_job
from pipelines.imageops import grow_mask, normalize_mask
from pipelines.placement.erase import place_erase
from tests.conftest import noise_image, rect_mask
from tests.pipelines.jobs import diffusion_job

GREEN = Image.new("RGB", (24, 24), (0, 180, 40))
MAGENTA = Image.new("RGB", (24, 24), (220, 20, 200))


def erase_job(**overrides) -> SwapJob:
    return diffusion_job(**{"object_image": None, "mode": "erase", "prompt": "", **overrides})


def grown_of(job: SwapJob) -> np.ndarray:
    return grow_mask(normalize_mask(job.mask_image, job.main_image.size), job.growmask)


def assert_only_the_grown_mask_changed(job: SwapJob, out: Image.Image) -> None:
    grown, before, after = grown_of(job), np.asarray(job.main_image), np.asarray(out)
    assert out.size == job.main_image.size and out.mode == "RGB"
    assert np.array_equal(after[~grown], before[~grown])
    assert (after[grown] != before[grown]).any(axis=-1).mean() > 0.5


def test_a_job_needs_an_object_unless_it_erases():
    with pytest.raises(InvalidInput) as raised:
        diffusion_job(object_image=None)
    assert raised.value.field == "object_image" and "unless mode is erase" in str(raised.value)
    assert erase_job().object_image is None


def test_build_job_leaves_an_erases_object_out():
    images = {"main_image": noise_image((8, 6)), "mask_image": Image.new("L", (8, 6), 255), "object_image": GREEN}
    assert build_job({"mode": "erase"}, images).object_image is None
    assert build_job({"mode": "erase"}, {k: v for k, v in images.items() if k != "object_image"}).mode == "erase"
    assert build_job({}, images).object_image is GREEN


def test_composite_erase_changes_only_the_grown_mask_and_repeats_itself():
    job = erase_job(main_image=noise_image((80, 60), seed=3), mask_image=rect_mask((80, 60), (20, 15, 50, 40)))
    out = CompositeEngine().swap(job)
    assert_only_the_grown_mask_changed(job, out)
    assert out.tobytes() == CompositeEngine().swap(job).tobytes()
    assert out.tobytes() == place_erase(job).image.tobytes()  # the fill is all there is to it


def test_composite_erase_ignores_an_object_sent_with_it():
    engine = CompositeEngine()
    assert engine.swap(erase_job(object_image=GREEN)).tobytes() == engine.swap(erase_job()).tobytes()


def test_an_erase_removes_what_the_mask_covered():
    """A flat scene with a red square under the mask: after the erase no red is left in the grown mask."""
    scene = Image.new("RGB", (90, 70), (90, 110, 130))
    scene.paste((230, 20, 20), (35, 25, 55, 45))
    job = erase_job(main_image=scene, mask_image=rect_mask((90, 70), (33, 23, 56, 46)), growmask=2)
    out = np.asarray(CompositeEngine().swap(job), dtype=int)
    assert np.abs(out[grown_of(job)] - (90, 110, 130)).max() < 30
