"""What the diffusion engine hands the pipeline, on tiny weights: the placed pixels, the strength, the step
count, the mask widened to whole latent cells, the reference image and its IP-Adapter mask.
Tiny random weights cannot show quality; these check the mechanics the quality rests on."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import SwapJob

pytest.importorskip("diffusers")

from pipelines.engines.diffusion.conditioning import reference_image  # noqa: E402
from pipelines.engines.diffusion.device_ops import match_to  # noqa: E402
from pipelines.engines.diffusion.engine import LATENT_MARGIN, DiffusionEngine  # noqa: E402
from pipelines.engines.diffusion.geometry import context_box, crop_geometry, crop_mask, dilate  # noqa: E402
from pipelines.engines.diffusion.schedule import LOW_STEPS  # noqa: E402
from pipelines.models.model_sets import ModelSet  # noqa: E402
from pipelines.placement import grid_reference, place  # noqa: E402
from tests.conftest import noise_image, rect_mask  # noqa: E402
from tests.pipelines.grids import assert_grid, cell_centres, disk_tile, red_components  # noqa: E402
from tests.pipelines.jobs import diffusion_job  # noqa: E402
from tests.pipelines.recording import RecordingPipeline  # noqa: E402


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def engine(request, tiny_weights):
    engine = DiffusionEngine(ModelSet(request.param, tiny_weights / request.param, "plus"))
    engine.pipe = RecordingPipeline(engine.pipe)
    return engine


def last_call(engine) -> dict:
    return engine.pipe.calls[-1]


def tall_object() -> Image.Image:
    obj = Image.new("RGBA", (20, 100), (0, 0, 0, 0))
    ImageDraw.Draw(obj).rectangle((0, 0, 19, 99), fill=(230, 20, 20, 255))
    return obj


def test_the_pipeline_starts_from_the_placed_pixels(engine):
    job = diffusion_job(object_image=tall_object(), steps=10)
    engine.swap(job)
    placement = place(job)
    box, size = crop_geometry(
        context_box(placement.grown, job.main_image.size), job.main_image.size, engine.native_side
    )
    expected = placement.image.crop(box).resize(size, Image.Resampling.LANCZOS)
    assert last_call(engine)["image"].tobytes() == expected.tobytes()
    assert (last_call(engine)["width"], last_call(engine)["height"]) == size


@pytest.mark.parametrize(("steps", "subject"), [(10, 1.0), (13, 0.5), (11, 0.0), (24, 0.8)])
def test_exactly_the_asked_steps_run_from_the_planned_start(engine, steps, subject):
    seen = []
    engine.swap(diffusion_job(steps=steps, subject_strength=subject), progress=lambda done, total: seen.append(done))
    call = last_call(engine)
    plan = engine.start_plan(steps, subject)
    assert (call["strength"], call["num_inference_steps"]) == (plan.strength, plan.length)
    assert call["scheduler"] is plan.scheduler
    assert (call["strength"] == 1.0) == (subject == 0.0)  # pure noise only at subject 0
    assert seen == list(range(1, steps + 1))  # one callback per denoising step actually run
    low = type(call["scheduler"]).__name__ == "DPMSolverMultistepScheduler"
    assert low == (steps < LOW_STEPS) and low == (call["timesteps"] is not None)  # Karras-spaced, given


def test_the_pipeline_mask_covers_whole_latent_cells_beyond_the_grown_mask(engine):
    job = diffusion_job(steps=10)
    engine.swap(job)
    call = last_call(engine)
    size = (call["width"], call["height"])
    placement = place(job)
    box, _ = crop_geometry(context_box(placement.grown, job.main_image.size), job.main_image.size, engine.native_side)
    grown = crop_mask(placement.grown, box, size)
    pipeline_mask = np.asarray(call["mask_image"].convert("L")) > 127
    assert np.array_equal(pipeline_mask, dilate(grown, LATENT_MARGIN))
    assert pipeline_mask[dilate(grown, 8)].all()  # at least one latent cell (8 px) all round
    finest = call["cross_attention_kwargs"]["ip_adapter_masks"][0]  # one token per latent cell
    cells = pipeline_mask.reshape(size[1] // 8, 8, size[0] // 8, 8).mean(axis=(1, 3))
    assert np.array_equal(finest.reshape(cells.shape).numpy(), cells)


def test_the_encoder_sees_the_whole_object_padded_to_a_square():
    job = diffusion_job(object_image=tall_object())
    reference = reference_image(place(job), job.horizontal_repeat, job.vertical_repeat)
    assert reference.width == reference.height
    red = np.asarray(reference)[..., 0] > 200
    rows = np.flatnonzero(red.any(axis=1))
    assert rows[0] == 0 and rows[-1] == reference.height - 1  # top to bottom: the centre crop cuts nothing


PATTERN_SCENE = (160, 120)
PATTERN_MASKS = {"wide": (10, 40, 149, 79), "tall": (60, 5, 99, 114)}


def pattern_job(shape: str, horizontal: int, vertical: int) -> SwapJob:
    return diffusion_job(
        main_image=noise_image(PATTERN_SCENE, seed=5),
        mask_image=rect_mask(PATTERN_SCENE, PATTERN_MASKS[shape]),
        object_image=disk_tile(),
        horizontal_repeat=horizontal,
        vertical_repeat=vertical,
    )


@pytest.mark.parametrize("shape", PATTERN_MASKS)
@pytest.mark.parametrize(("horizontal", "vertical"), [(4, 1), (1, 4), (3, 5)])
def test_the_encoder_gets_the_pattern_as_the_placed_h_by_v_grid(engine, monkeypatch, shape, horizontal, vertical):
    """What reaches IP-Adapter's image encoder (cached or not, it goes through prepare_ip_adapter_image_embeds):
    the h x v grid at the grown box's aspect, padded to a square."""
    seen = []
    pipe = engine.pipe._pipe  # under the recording wrapper
    encode = pipe.prepare_ip_adapter_image_embeds

    def recording(image, *args, **kwargs):
        if image is not None:
            seen.append(image)
        return encode(image, *args, **kwargs)

    monkeypatch.setattr(pipe, "prepare_ip_adapter_image_embeds", recording)
    job = pattern_job(shape, horizontal, vertical)
    engine.swap(job)
    assert len(seen) == 1, "the encoder was not asked for this grid (a cached reference of another box?)"
    reference = seen[0]
    box = place(job).box
    width, height = grid_reference(job.object_image, box, horizontal, vertical).size
    assert abs(width / height - (box[2] - box[0]) / (box[3] - box[1])) < 0.03
    assert reference.width == reference.height == max(width, height)
    left, top = (reference.width - width) // 2, (reference.height - height) // 2
    expected = cell_centres((left, top, left + width, top + height), horizontal, vertical)
    assert_grid(red_components(np.asarray(reference)), expected, tolerance=1.0)


def test_cached_and_uncached_conditioning_use_the_same_reference(tiny_weights):
    from pipelines.engines.diffusion.options import DiffusionOptions

    model_set = ModelSet("sd15", tiny_weights / "sd15", "plain")
    uncached = DiffusionEngine(model_set, DiffusionOptions(embed_cache_size=0))
    uncached.pipe = RecordingPipeline(uncached.pipe)
    job = diffusion_job(object_image=tall_object(), steps=10)
    uncached.swap(job)
    expected = reference_image(place(job), 1, 1)
    assert uncached.pipe.calls[-1]["ip_adapter_image"].tobytes() == expected.tobytes()


def test_colour_matching_removes_a_cast_measured_in_the_ring():
    import torch

    rng = np.random.default_rng(0)
    original = torch.from_numpy(rng.uniform(60, 200, (3, 40, 40)).astype(np.float32))
    generated = original * 0.9 + torch.tensor([30.0, -10.0, 5.0])[:, None, None]  # a colour cast over everything
    ring = torch.zeros(40, 40, dtype=torch.bool)
    ring[:5] = True
    matched = match_to(generated, original, ring)
    assert (matched - original).abs().mean() < 1.0
    assert torch.equal(match_to(generated, original, torch.zeros(40, 40, dtype=torch.bool)), generated)


def test_latent_previews_map_latents_to_rgb_per_architecture():
    import torch

    from pipelines.engines.diffusion.preview import latent_preview

    zero = torch.zeros(1, 4, 6, 10)
    assert latent_preview(zero, "sd15").size == (10, 6)
    assert set(np.asarray(latent_preview(zero, "sd15")).ravel()) == {128}  # no bias: mid grey
    sdxl = np.asarray(latent_preview(zero, "sdxl"))[0, 0]
    assert sdxl[0] > 128 > sdxl[1]  # SDXL's latents carry a colour bias
    bright = torch.zeros(1, 4, 2, 2)
    bright[:, 0] = 10.0
    assert (np.asarray(latent_preview(bright, "sd15")) == 255).all()  # clipped, not wrapped


def test_the_model_output_stays_a_tensor_into_the_finish(engine):
    """The pipeline hands back a tensor (output_type "pt") and the finish (colour match, resize, paste) runs
    on it where it is; handed the same crop as an image, the finish gives the same picture."""
    import torch

    job = diffusion_job(steps=10)
    prepared = engine.prepare(job)
    generated = engine.generate(job, prepared)
    assert last_call(engine)["output_type"] == "pt"
    assert isinstance(generated, torch.Tensor) and tuple(generated.shape) == (
        3,
        prepared.crop.size[1],
        prepared.crop.size[0],
    )
    from_tensor = np.asarray(engine.finish(job, prepared, generated), dtype=int)
    as_image = Image.fromarray((generated.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
    from_image = np.asarray(engine.finish(job, prepared, as_image), dtype=int)
    assert np.abs(from_tensor - from_image).max() <= 1
    grown = place(job).grown
    assert np.array_equal(from_tensor[~grown], np.asarray(job.main_image, dtype=int)[~grown])


def test_the_accelerator_filters_compute_what_the_cpu_ones_do():
    """On a GPU the blur and the Sobel edges are convolutions, on the CPU OpenCV's filters: the same numbers,
    borders included (both checked here on the CPU)."""
    import torch

    from pipelines.engines.diffusion import device_ops

    image = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (3, 61, 97)).astype(np.float32))
    for sigma in (1.0, 2.5, 10.0):
        opencv, convolved = device_ops.gaussian_blur(image, sigma), device_ops._convolved_blur(image, sigma)
        assert (opencv - convolved).abs().max() < 1e-2, sigma
    grey = device_ops.gaussian_blur(image.mean(dim=0, keepdim=True), 1.0)
    assert (device_ops.edge_magnitude(image, 1.0) - device_ops._convolved_sobel(grey)).abs().max() < 1e-2
