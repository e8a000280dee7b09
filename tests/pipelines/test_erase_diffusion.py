"""mode=erase on the diffusion engines (tiny random-weight sets): inpainted with no object conditioning, from the
fill, with the job's prompt or a neutral one; nothing outside the grown mask touched."""

import pytest
from PIL import Image

pytest.importorskip("diffusers")

from pipelines import SwapJob  # noqa: E402
from pipelines.engines.diffusion.engine import DiffusionEngine  # noqa: E402
from pipelines.engines.diffusion.erase import ERASE_NEGATIVE_PROMPT, ERASE_PROMPT  # noqa: E402
from pipelines.engines.diffusion.flux2 import Flux2Engine  # noqa: E402
from pipelines.engines.diffusion.options import DiffusionOptions  # noqa: E402
from pipelines.models.model_sets import ModelSet, model_set_at  # noqa: E402
from pipelines.placement.erase import place_erase  # noqa: E402
from tests.pipelines.jobs import diffusion_job  # noqa: E402
from tests.pipelines.recording import RecordingPipeline  # noqa: E402
from tests.pipelines.test_erase import GREEN, MAGENTA, assert_only_the_grown_mask_changed, erase_job  # noqa: E402


@pytest.fixture(scope="module", params=[("sd15", "plus"), ("sdxl", "plain")], ids=lambda c: f"{c[0]}-{c[1]}")
def sd_set(request, tiny_weights) -> ModelSet:
    arch, variant = request.param
    return ModelSet(arch, tiny_weights / arch, variant)


@pytest.fixture(scope="module")
def sd_engine(sd_set) -> DiffusionEngine:
    return DiffusionEngine(sd_set)


@pytest.fixture(scope="module", params=["flux2-klein", "flux2-klein-base"])
def flux2_engine(request, tiny_flux2_weights) -> Flux2Engine:
    return Flux2Engine(model_set_at(tiny_flux2_weights / request.param))


def recorded_call(engine, job: SwapJob) -> tuple[Image.Image, dict]:
    recording = RecordingPipeline(engine.pipe)
    engine.pipe = recording
    try:
        out = engine.swap(job)
    finally:
        engine.pipe = recording._pipe
    return out, recording.calls[-1]


def test_sd_erase_changes_only_the_grown_mask_same_seed_same_bytes(sd_engine):
    out = sd_engine.swap(erase_job())
    assert_only_the_grown_mask_changed(erase_job(), out)
    assert out.tobytes() == sd_engine.swap(erase_job()).tobytes()
    assert out.tobytes() != sd_engine.swap(erase_job(seed=12)).tobytes()


def test_sd_erase_turns_the_ip_adapter_off_and_starts_from_the_fill(sd_engine):
    sd_engine.swap(erase_job())
    scales = [p.scale for p in sd_engine.pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert scales and all(scale == [0.0] for scale in scales)
    prepared = sd_engine.prepare(erase_job(object_image=GREEN))
    assert prepared.placement.mode == "erase" and not prepared.placement.coverage.any()
    assert prepared.placement.image.tobytes() == place_erase(erase_job()).image.tobytes()  # no object pixel
    assert (
        sd_engine.swap(erase_job(object_image=GREEN)).tobytes()
        == sd_engine.swap(erase_job(object_image=MAGENTA)).tobytes()
    )


def test_sd_erase_prompts_are_the_jobs_else_neutral_ones(sd_set):
    engine = DiffusionEngine(sd_set, DiffusionOptions(embed_cache_size=0))  # the pipeline gets the raw prompts
    _, neutral = recorded_call(engine, erase_job())
    assert (neutral["prompt"], neutral["negative_prompt"]) == (ERASE_PROMPT, ERASE_NEGATIVE_PROMPT)
    _, own = recorded_call(engine, erase_job(prompt="a stone wall", negative_prompt="moss"))
    assert (own["prompt"], own["negative_prompt"]) == ("a stone wall", "moss")
    _, swap = recorded_call(engine, diffusion_job())
    assert (swap["prompt"], swap["negative_prompt"]) == ("a green cube", None)  # a swap's are as they were


def test_flux2_erase_has_no_reference_and_changes_only_the_grown_mask(flux2_engine):
    out, call = recorded_call(flux2_engine, erase_job(object_image=GREEN))
    assert call["image_reference"] is None
    assert_only_the_grown_mask_changed(erase_job(), out)
    assert out.tobytes() == flux2_engine.swap(erase_job()).tobytes()
    assert ("flux2-prompt", ERASE_PROMPT) in flux2_engine.embeddings._entries
