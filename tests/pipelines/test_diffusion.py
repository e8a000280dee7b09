"""The diffusion engine, end to end on tiny random-weight model sets loaded like real ones."""

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from pipelines import SwapJob, WeightsError, load_engine  # noqa: E402
from pipelines.engines.diffusion.conditioning import (  # noqa: E402
    LAYOUT_SCALE,
    STYLE_BLOCKS,
    STYLE_SCALE,
    SUBJECT_SCALE,
    block_kind,
    set_ip_adapter_strengths,
)
from pipelines.engines.diffusion.engine import DiffusionEngine  # noqa: E402
from pipelines.engines.diffusion.geometry import (  # noqa: E402
    BUCKETS,
    context_box,
    crop_geometry,
    processing_size,
    with_context,
)
from pipelines.engines.diffusion.options import DiffusionOptions  # noqa: E402
from pipelines.imageops import grow_mask, normalize_mask  # noqa: E402
from pipelines.models.model_sets import ModelSet, require_model_set  # noqa: E402
from tests.conftest import rect_mask  # noqa: E402
from tests.pipelines.jobs import SIZE, diffusion_job  # noqa: E402

COMBOS = [("sd15", "plain"), ("sd15", "plus"), ("sdxl", "plain"), ("sdxl", "plus")]


@pytest.fixture(scope="module", params=COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def engine(request, tiny_weights) -> DiffusionEngine:
    arch, variant = request.param
    return DiffusionEngine(ModelSet(arch, tiny_weights / arch, variant))


def job(**overrides) -> SwapJob:
    return diffusion_job(**overrides)


def test_same_seed_same_bytes_other_seed_differs(engine):
    first = engine.swap(job())
    assert first.tobytes() == engine.swap(job()).tobytes()
    assert first.tobytes() != engine.swap(job(seed=12)).tobytes()


def test_object_image_steers_the_output(engine):
    other = Image.new("RGB", (24, 24), (220, 20, 200))
    assert engine.swap(job()).tobytes() != engine.swap(job(object_image=other)).tobytes()


def test_odd_size_comes_back_exact_and_outside_grown_mask_identical(engine):
    j = job()
    out = engine.swap(j)
    assert out.size == SIZE and out.mode == "RGB"
    grown = grow_mask(normalize_mask(j.mask_image, SIZE), j.growmask)
    assert np.array_equal(np.asarray(out)[~grown], np.asarray(j.main_image)[~grown])
    assert not np.array_equal(np.asarray(out)[grown], np.asarray(j.main_image)[grown])


def test_per_block_scales_follow_the_strengths(engine):
    engine.swap(job(subject_strength=0.25, fashion_strength=0.75))
    arch = engine.model_set.arch
    scales = {name: p.scale for name, p in engine.pipe.unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    assert scales, "no IP-Adapter processor was installed"
    expected = {"style": STYLE_SCALE * 0.75, "layout": LAYOUT_SCALE * 0.25, "other": SUBJECT_SCALE * 0.25}
    kinds = {name: block_kind(name, arch) for name in scales}
    assert "style" in kinds.values() and "other" in kinds.values()
    assert all(scale == [expected[kinds[name]]] for name, scale in scales.items())
    if arch == "sd15":  # InstantStyle's SD1.5 style block: every transformer of up_blocks.1
        in_style = [n for n, kind in kinds.items() if kind == "style"]
        attentions = {n.split(".")[3] for n in in_style}
        assert len(attentions) == len(engine.pipe.unet.up_blocks[1].attentions) > 1
    else:  # InstantStyle's SDXL layout block
        assert (
            {n for n, kind in kinds.items() if kind == "layout"}
            == {n for n in scales if n.startswith("down_blocks.2.attentions.1.")}
            != set()
        )


def test_style_only_is_instantstyles_setting_and_no_scale_passes_its_source(engine):
    unet, arch = engine.pipe.unet, engine.model_set.arch
    style = STYLE_BLOCKS[arch]
    scales = set_ip_adapter_strengths(unet, arch, subject=0.0, fashion=1.0)
    assert {v for n, v in scales.items() if n.startswith(style)} == {1.0}  # InstantStyle: style block 1.0
    assert {v for n, v in scales.items() if not n.startswith(style)} == {0.0}  # the rest off
    full = set_ip_adapter_strengths(unet, arch, 1.0, 1.0)
    assert max(full.values()) <= 1.0 and min(full.values()) == 0.6  # diffusers' inpainting example: 0.6


def test_progress_reports_every_step(engine):
    seen = []
    engine.swap(job(steps=3), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_processing_size_keeps_aspect_at_native_area():
    width, height = processing_size((0, 0, 300, 150), 1024)
    assert width % 8 == 0 and height % 8 == 0
    assert abs(width / height - 2.0) < 0.02 and abs(width * height - 1024**2) / 1024**2 < 0.02


@pytest.mark.parametrize("box", [(900, 900, 1660, 1672), (900, 900, 1300, 1000), (900, 900, 960, 1500), (5, 7, 60, 33)])
def test_crops_take_a_bucket_size_and_its_aspect_with_more_context(box):
    """A compiled model sees a few shapes: a box with room around it widens on its short side to the nearest
    of SDXL's training aspects and is processed at that bucket's size, keeping everything it held."""
    image = (4000, 4000)
    context = with_context(box, image)
    fitted, size = crop_geometry(context, image, 1024)
    assert size in BUCKETS
    width, height = fitted[2] - fitted[0], fitted[3] - fitted[1]
    assert abs(width / height - size[0] / size[1]) < 0.01 * size[0] / size[1]
    assert fitted[0] <= context[0] and fitted[1] <= context[1] and fitted[2] >= context[2] and fitted[3] >= context[3]
    assert all(0 <= v <= 4000 for v in fitted)


def test_a_strip_along_the_edge_keeps_its_own_aspect():
    """A box the image has no room to widen (a strip of a 3000 x 30 image) keeps its aspect and is processed
    at its own size (long side at most twice the native)."""
    box, size = crop_geometry((0, 0, 3000, 30), (3000, 30), 1024)
    assert box == (0, 0, 3000, 30) and size == processing_size((0, 0, 3000, 30), 1024) and size[0] == 2048


def test_context_box_adds_margin_and_limits_elongation():
    mask = np.zeros((400, 1000), dtype=bool)
    mask[200:210, 100:900] = True  # a thin strip
    left, top, right, bottom = context_box(mask, (1000, 400))
    assert left < 100 and right > 900 and top < 200 and bottom > 210
    assert (right - left) <= 2.0 * (bottom - top) + 2 or top == 0 or bottom == 400


def test_auto_picks_sdxl_and_names_it(tiny_weights):
    choice = load_engine("auto", tiny_weights)
    assert choice.engine.name == "diffusion/sdxl" and "complete model set" in choice.reason


def test_missing_file_is_a_clear_weights_error(tiny_weights, tmp_path):
    import shutil

    broken = tmp_path / "sd15"
    shutil.copytree(tiny_weights / "sd15", broken)
    (broken / "ip_adapter/models/ip-adapter-plus_sd15.safetensors").unlink()
    with pytest.raises(WeightsError, match="incomplete, missing ip_adapter/models/ip-adapter-plus_sd15.safetensors"):
        require_model_set(tmp_path, "sd15")
    assert load_engine("auto", tmp_path).engine.name == "composite"


def test_corrupt_weights_file_is_a_clear_weights_error(tiny_weights, tmp_path):
    import shutil

    broken = tmp_path / "sd15"
    shutil.copytree(tiny_weights / "sd15", broken)
    (broken / "base/unet/diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot load model set"):
        load_engine("diffusion", tmp_path)


def test_diffusion_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(WeightsError, match="segswap weights download"):
        load_engine("diffusion", tmp_path)


def test_a_strip_along_the_edge_is_swapped(engine):
    """A 3000 x 30 scene masked end to end gives a crop a few latents high (diffusers' IP-Adapter mask
    downsampling divided by zero there; the token masks take any grid)."""
    native = engine.native_side
    engine.native_side = 512
    try:
        size = (3000, 30)
        job = diffusion_job(
            main_image=Image.new("RGB", size, (90, 120, 150)), mask_image=rect_mask(size, (10, 5, 2990, 25))
        )
        out = engine.swap(job)
    finally:
        engine.native_side = native
    assert out.size == size
    grown = grow_mask(normalize_mask(job.mask_image, size), job.growmask)
    assert np.array_equal(np.asarray(out)[~grown], np.asarray(job.main_image)[~grown])


def test_sdxl_does_not_watermark_on_its_own(tiny_weights):
    """diffusers' SDXL pipelines watermark every image whenever invisible-watermark is installed (it is, with the
    provenance extra); the watermark is an operator's setting (server/inputs/provenance.py), so ours stay unmarked."""
    pytest.importorskip("imwatermark")
    engine = DiffusionEngine(ModelSet("sdxl", tiny_weights / "sdxl"), DiffusionOptions(device="cpu"))
    assert engine.pipe.watermark is None
