"""The FLUX.2 [klein] engine, end to end on tiny random-weight sets loaded like the real repositories."""

import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

import torch  # noqa: E402

from pipelines import WeightsError, load_engine  # noqa: E402
from pipelines.engines.diffusion.flux2 import (  # noqa: E402
    DISTILLED_STEPS,
    PIPELINE_MAX_AREA,
    REFERENCE_AREA,
    Flux2Engine,
    reference_image,
)
from pipelines.engines.diffusion.geometry import processing_size, whole_cells  # noqa: E402
from pipelines.engines.diffusion.object_look import ALIGNED_AT, ALIGNED_FROM, alignment, keep_own_look  # noqa: E402
from pipelines.engines.diffusion.options import DiffusionOptions  # noqa: E402
from pipelines.imageops import grow_mask, normalize_mask  # noqa: E402
from pipelines.models.model_sets import model_set_at  # noqa: E402
from pipelines.placement import grid_reference, place  # noqa: E402
from tests.conftest import noise_image, rect_mask  # noqa: E402
from tests.pipelines.grids import assert_grid, cell_centres, disk_tile, red_components  # noqa: E402
from tests.pipelines.jobs import SIZE, diffusion_job  # noqa: E402
from tests.pipelines.recording import RecordingPipeline  # noqa: E402

RED = Image.new("RGB", (24, 24), (220, 20, 20))
BLUE = Image.new("RGB", (24, 24), (20, 20, 220))


@pytest.fixture(scope="module", params=["flux2-klein", "flux2-klein-base"])
def engine(request, tiny_flux2_weights) -> Flux2Engine:
    return Flux2Engine(model_set_at(tiny_flux2_weights / request.param))


def test_named_for_its_set(engine):
    assert engine.name == f"diffusion/{engine.model_set.folder.name}"
    assert engine.distilled is (engine.model_set.folder.name == "flux2-klein")


def test_same_seed_same_bytes_other_seed_differs(engine):
    first = engine.swap(diffusion_job())
    assert first.tobytes() == engine.swap(diffusion_job()).tobytes()
    assert first.tobytes() != engine.swap(diffusion_job(seed=12)).tobytes()


def test_odd_size_comes_back_exact_and_outside_grown_mask_identical(engine):
    job = diffusion_job()
    out = engine.swap(job)
    assert out.size == SIZE and out.mode == "RGB"
    grown = grow_mask(normalize_mask(job.mask_image, SIZE), job.growmask)
    assert np.array_equal(np.asarray(out)[~grown], np.asarray(job.main_image)[~grown])
    assert not np.array_equal(np.asarray(out)[grown], np.asarray(job.main_image)[grown])


def test_the_reference_image_reaches_the_model(engine):
    """At subject_strength 0 nothing is placed and the model repaints fully: only the reference carries
    the object, so another object must give another image."""
    red = engine.swap(diffusion_job(object_image=RED, subject_strength=0.0))
    blue = engine.swap(diffusion_job(object_image=BLUE, subject_strength=0.0))
    assert red.tobytes() != blue.tobytes()


def test_steps_run_as_documented(engine):
    seen: list[tuple[int, int]] = []
    engine.swap(diffusion_job(steps=10), progress=lambda done, total: seen.append((done, total)))
    expected = DISTILLED_STEPS if engine.distilled else 10
    assert seen == [(step, expected) for step in range(1, expected + 1)]


def test_the_distilled_model_gets_no_guidance_argument_above_one(engine):
    """The step-distilled model was distilled without guidance and ignores any scale (diffusers warns); it gets
    1, none. The base model gets the job's."""
    recorded = RecordingPipeline(engine.pipe)
    engine.pipe = recorded
    try:
        engine.swap(diffusion_job(guidance_scale=7.5))
    finally:
        engine.pipe = recorded._pipe
    assert recorded.calls[-1]["guidance_scale"] == (1.0 if engine.distilled else 7.5)


def test_negative_prompt_counts_only_where_guidance_runs(engine):
    plain = engine.swap(diffusion_job(guidance_scale=4.0))
    negative = engine.swap(diffusion_job(guidance_scale=4.0, negative_prompt="blurry, dark"))
    assert (plain.tobytes() == negative.tobytes()) is engine.distilled


def test_cached_and_uncached_prompt_embeddings_give_the_same_bytes(engine, tiny_flux2_weights):
    uncached = Flux2Engine(engine.model_set, DiffusionOptions(embed_cache_size=0))
    assert uncached.swap(diffusion_job()).tobytes() == engine.swap(diffusion_job()).tobytes()
    assert len(engine.embeddings) > 0 and len(uncached.embeddings) == 0


def test_fashion_strength_keeps_the_objects_own_detail(engine):
    """Through the engine's own finish: a model output that kept the object in place but softened it and
    drifted its colour (random tiny weights draw nothing registered) gets the placed object's fine detail and
    colour back at fashion 1, and stays the model's at fashion 0."""
    rng = np.random.default_rng(0)
    marks = np.kron(rng.random((10, 10)) > 0.6, np.ones((4, 4), bool))
    printed = np.where(marks[..., None], (250, 240, 220), (200, 40, 40)).astype(np.uint8)
    errors = {}
    for fashion in (0.0, 1.0):
        job = diffusion_job(object_image=Image.fromarray(printed), growmask=0, fashion_strength=fashion)
        prepared = engine.prepare(job)
        softened = redrawn(np.asarray(prepared.crop.init, dtype=np.float32))
        generated = Image.fromarray(np.clip(softened, 0, 255).astype(np.uint8))
        out = np.asarray(engine.finish(job, prepared, generated), dtype=np.float32)
        placed = np.asarray(prepared.placement.image, dtype=np.float32)
        on_object = prepared.placement.coverage > 0.5  # the fill around it is the model's at any fashion
        errors[fashion] = np.abs(out - placed)[on_object].mean()
    assert errors[1.0] < 0.8 * errors[0.0]


def redrawn(placed: np.ndarray, shift: int = 0) -> np.ndarray:
    """What a model makes of a placed object: softened, its colour drifted, optionally moved `shift` px right."""
    soft = cv2.GaussianBlur(placed, (0, 0), 1.5) * 0.8 + 12.0
    return np.roll(soft, shift, axis=1) if shift else soft


def tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def own_look(generated: np.ndarray, placed: np.ndarray, coverage: np.ndarray, amount: float) -> np.ndarray:
    """keep_own_look on (H, W, 3) arrays, as a test writes them."""
    return keep_own_look(tensor(generated), tensor(placed), coverage, amount).numpy().transpose(1, 2, 0)


def printed_object_scene() -> tuple[np.ndarray, np.ndarray]:
    """A plain backdrop with a red object printed with irregular pale marks (fine detail, no period)."""
    rng = np.random.default_rng(0)
    placed = np.clip(rng.normal(128, 10, (96, 96, 3)), 0, 255).astype(np.float32)
    marks = np.kron(rng.random((16, 16)) > 0.6, np.ones((3, 3), bool))
    placed[24:72, 24:72] = np.where(marks[..., None], (250, 240, 220), (200, 40, 40))
    coverage = np.zeros((96, 96), np.float32)
    coverage[24:72, 24:72] = 1.0
    return placed, coverage


def test_keep_own_look_takes_the_detail_and_colour_over_the_coverage():
    placed, coverage = printed_object_scene()
    generated = redrawn(placed)
    assert np.array_equal(own_look(generated, placed, coverage, 0.0), generated)
    kept = own_look(generated, placed, coverage, 1.0)
    assert np.array_equal(kept[coverage == 0], generated[coverage == 0])
    core = (slice(28, 68), slice(28, 68))
    assert np.abs(kept[core] - placed[core]).mean() < 0.5 * np.abs(generated[core] - placed[core]).mean()
    assert abs(kept[core].mean() - placed[core].mean()) < 0.05 * placed[core].mean()


def test_keep_own_look_adds_no_double_edges_where_the_model_moved_the_object():
    """A generated crop with the object 6 px to the right: putting the placed marks back would draw them
    beside the model's. The output stays the model's own."""
    placed, coverage = printed_object_scene()
    moved = redrawn(placed, shift=6)
    aligned = alignment(tensor(redrawn(placed)), tensor(placed), coverage)
    assert aligned > ALIGNED_AT > ALIGNED_FROM > alignment(tensor(moved), tensor(placed), coverage)
    assert np.array_equal(own_look(moved, placed, coverage, 1.0), moved)
    flat = np.full_like(placed, 90.0)  # nothing to register against: nothing put back either
    assert np.array_equal(own_look(flat, placed, coverage, 1.0), flat)


def test_reference_is_padded_to_whole_cells_and_capped():
    job = diffusion_job(object_image=Image.new("RGB", (1500, 900), (10, 200, 10)))
    reference = reference_image(place(job), 16, 1024 * 1024, (1, 1))
    assert reference.width % 16 == 0 and reference.height % 16 == 0
    assert REFERENCE_AREA * 0.9 <= reference.width * reference.height <= REFERENCE_AREA * 1.1
    small = reference_image(
        place(diffusion_job(object_image=Image.new("RGB", (37, 21), (10, 200, 10)))), 16, 4096, (1, 1)
    )
    assert small.size == (48, 32), "padded up, never cropped"


def test_the_reference_never_has_more_tokens_than_the_scene(engine):
    """The tiny set's crops are 64 x 64: a large object reaches the model at that area, not at REFERENCE_AREA."""
    recorded = RecordingPipeline(engine.pipe)
    engine.pipe = recorded
    try:
        engine.swap(diffusion_job(object_image=Image.new("RGB", (900, 600), (10, 200, 10))))
    finally:
        engine.pipe = recorded._pipe
    call = recorded.calls[-1]
    reference, scene = call["image_reference"], call["image"]
    assert reference.width * reference.height <= scene.width * scene.height + 16 * (reference.width + reference.height)
    assert reference.width * reference.height < REFERENCE_AREA / 10


PATTERN_SCENE = (160, 120)
PATTERN_MASKS = {"wide": (10, 40, 149, 79), "tall": (60, 5, 99, 114)}


@pytest.mark.parametrize("shape", PATTERN_MASKS)
@pytest.mark.parametrize(("horizontal", "vertical"), [(4, 1), (1, 4), (3, 5)])
def test_the_reference_is_the_placed_h_by_v_grid(engine, shape, horizontal, vertical):
    """`image_reference` as the pipeline gets it: the pattern's h x v grid at the grown box's aspect, scaled to
    the crop's area and padded to whole cells."""
    job = diffusion_job(
        main_image=noise_image(PATTERN_SCENE, seed=5),
        mask_image=rect_mask(PATTERN_SCENE, PATTERN_MASKS[shape]),
        object_image=disk_tile(),
        horizontal_repeat=horizontal,
        vertical_repeat=vertical,
    )
    recorded = RecordingPipeline(engine.pipe)
    engine.pipe = recorded
    try:
        engine.swap(job)
    finally:
        engine.pipe = recorded._pipe
    call = recorded.calls[-1]
    reference, scene = call["image_reference"], call["image"]
    box = place(job).box
    grid = grid_reference(job.object_image, box, horizontal, vertical)
    assert abs(grid.width / grid.height - (box[2] - box[0]) / (box[3] - box[1])) < 0.03
    scale = min(1.0, (min(REFERENCE_AREA, scene.width * scene.height) / (grid.width * grid.height)) ** 0.5)
    width, height = round(grid.width * scale), round(grid.height * scale)
    left, top = (reference.width - width) // 2, (reference.height - height) // 2
    expected = cell_centres((0, 0, grid.width, grid.height), horizontal, vertical)
    expected = (expected + 0.5) * (width / grid.width, height / grid.height) - 0.5 + (left, top)
    assert_grid(red_components(np.asarray(reference)), expected, tolerance=1.0)


@pytest.mark.parametrize("width", [517, 1000, 1333, 2998])
@pytest.mark.parametrize("height", [333, 1000, 1999])
def test_crops_stay_within_what_the_pipeline_takes_unshrunk(width, height):
    """Flux2KleinInpaintPipeline shrinks images above 1024^2; a crop rounded past it would come back smaller."""
    size = processing_size((0, 0, width, height), 1024, 16, PIPELINE_MAX_AREA)
    assert size[0] * size[1] <= PIPELINE_MAX_AREA and size[0] % 16 == 0 and size[1] % 16 == 0
    nearest = processing_size((0, 0, width, height), 1024, 16)
    assert all(0 <= near - side <= 16 for near, side in zip(nearest, size, strict=True)), "at most a cell less"


def test_whole_cells_fill_every_touched_cell():
    mask = np.zeros((40, 50), bool)
    mask[17, 33] = True
    cells = whole_cells(mask, 16)
    assert cells[16:32, 32:48].all() and cells.sum() == 16 * 16


def test_auto_prefers_flux2_klein_and_an_operator_set_wins(tiny_flux2_weights, tiny_weights, tmp_path):
    for folder in (tiny_weights / "sdxl", tiny_weights / "sd15", *tiny_flux2_weights.iterdir()):
        (tmp_path / folder.name).symlink_to(folder)
    assert load_engine("auto", tmp_path).engine.name == "diffusion/flux2-klein"
    assert load_engine("auto", tmp_path, model_set="sdxl").engine.name == "diffusion/sdxl"
    assert load_engine("auto", tmp_path, model_set="flux2-klein-base").engine.name == "diffusion/flux2-klein-base"


def test_missing_file_is_a_clear_weights_error(tiny_flux2_weights, tmp_path):
    shutil.copytree(tiny_flux2_weights / "flux2-klein", tmp_path / "flux2-klein")
    (tmp_path / "flux2-klein/base/transformer/diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="missing base/transformer/diffusion_pytorch_model.safetensors"):
        load_engine("diffusion", tmp_path, model_set="flux2-klein")
    assert load_engine("auto", tmp_path).engine.name == "composite"


def test_corrupt_weights_file_is_a_clear_weights_error(tiny_flux2_weights, tmp_path):
    shutil.copytree(tiny_flux2_weights / "flux2-klein", tmp_path / "flux2-klein")
    (tmp_path / "flux2-klein/base/text_encoder/model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot load model set"):
        load_engine("diffusion", tmp_path, model_set="flux2-klein")


def test_a_crop_at_the_real_native_side_comes_back_whole(tiny_flux2_weights):
    """At 1024^2 (the real models' side) this box would round to 1504 x 704, past the pipeline's 1 MP, and come
    back shrunk from it."""
    engine = Flux2Engine(model_set_at(tiny_flux2_weights / "flux2-klein"))
    engine.native_side = 1024
    size = (1501, 700)
    job = diffusion_job(
        main_image=Image.new("RGB", size, (90, 120, 150)),
        mask_image=Image.fromarray(np.pad(np.full((500, 1000), 255, np.uint8), ((100, 100), (250, 251)))),
    )
    out = engine.swap(job)
    assert out.size == size
    grown = grow_mask(normalize_mask(job.mask_image, size), job.growmask)
    assert np.array_equal(np.asarray(out)[~grown], np.asarray(job.main_image)[~grown])


def test_a_set_folder_given_directly_must_be_the_named_set(tiny_flux2_weights):
    with pytest.raises(WeightsError, match="holds the model set flux2-klein-base, not flux2-klein"):
        load_engine("diffusion", tiny_flux2_weights / "flux2-klein-base", model_set="flux2-klein")
    assert load_engine("diffusion", tiny_flux2_weights / "flux2-klein").engine.name == "diffusion/flux2-klein"


def test_an_interrupted_download_is_named_as_the_flux2_set_it_is(tiny_flux2_weights, tmp_path):
    """The text encoder shards come before the transformer in the manifest: a download stopped there still has
    a model_index.json naming FLUX.2, and the error must say what FLUX.2 lacks, not what SD1.5 would need."""
    shutil.copytree(tiny_flux2_weights / "flux2-klein", tmp_path / "partial")
    shutil.rmtree(tmp_path / "partial/base/transformer")
    with pytest.raises(WeightsError, match="missing base/transformer"):
        load_engine("diffusion", tmp_path / "partial")


def test_a_stray_single_file_checkpoint_does_not_confuse_a_flux2_set(tiny_flux2_weights, tmp_path):
    shutil.copytree(tiny_flux2_weights / "flux2-klein", tmp_path / "flux2-klein")
    (tmp_path / "flux2-klein/base.safetensors").write_bytes(b"stray")
    assert load_engine("auto", tmp_path).engine.name == "diffusion/flux2-klein"
