"""Fewer model evaluations: few-step mode (the LCM-LoRA fused into the UNet) and step caching (DeepCache on SD
UNets, TaylorSeer on FLUX.2), on tiny random-weight sets loaded through the real code."""

import shutil

import numpy as np
import pytest

pytest.importorskip("diffusers")

from diffusers import LCMScheduler

from pipelines.engines.diffusion.engine import DiffusionEngine
from pipelines.engines.diffusion.flux2 import Flux2Engine
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.errors import WeightsError
from pipelines.models.few_step import LORA_FILE, LORA_SETS, few_steps
from pipelines.models.model_sets import ModelSet, model_set_at
from pipelines.models.tiny_lora import TARGETS
from tests.pipelines.jobs import diffusion_job

FEW = DiffusionOptions(device="cpu", few_step=True)
CACHED = DiffusionOptions(device="cpu", step_cache=True)


def unet_calls(engine) -> list[int]:
    """The batch size of every UNet call the engine makes from now on."""
    calls: list[int] = []
    engine.pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize(
    ("steps", "expected"), [(2, 4), (10, 4), (30, 4), (35, 4), (36, 5), (51, 6), (60, 8), (100, 8)]
)
def test_the_contracts_steps_map_to_four_to_eight(steps, expected):
    assert few_steps(steps) == expected


@pytest.fixture(scope="module")
def few_step_engines(tiny_weights):
    return {arch: DiffusionEngine(ModelSet(arch, tiny_weights / arch), FEW) for arch in ("sdxl", "sd15")}


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_few_step_runs_four_lcm_steps_without_guidance(few_step_engines, arch):
    engine = few_step_engines[arch]
    calls, reported = unet_calls(engine), []
    job = diffusion_job(steps=30, guidance_scale=7.5)
    first = engine.swap(job, progress=lambda step, total: reported.append((step, total)))
    assert calls == [1, 1, 1, 1]  # four steps, one batch: no classifier-free guidance
    assert reported == [(1, 4), (2, 4), (3, 4), (4, 4)] and engine.steps_for(job) == 4
    assert isinstance(engine.pipe.scheduler, LCMScheduler)
    assert np.array_equal(np.asarray(first), np.asarray(engine.swap(job)))  # seeded: the same bytes again
    other_seed = engine.swap(diffusion_job(steps=30, seed=12))
    assert not np.array_equal(np.asarray(first), np.asarray(other_seed))


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_the_lora_is_fused_into_every_targeted_weight_and_ip_adapter_stays(tiny_weights, few_step_engines, arch):
    plain = DiffusionEngine(ModelSet(arch, tiny_weights / arch), DiffusionOptions(device="cpu")).pipe.unet
    fused = few_step_engines[arch].pipe.unet
    plain_weights, fused_weights = plain.state_dict(), fused.state_dict()
    assert set(plain_weights) == set(fused_weights)  # fused and unloaded: no LoRA layers left behind
    targeted = [  # the UNet's own layers; IP-Adapter's resampler (encoder_hid_proj) is not the LoRA's
        k
        for k in plain_weights
        if k.endswith(".weight") and k.removesuffix(".weight").endswith(TARGETS) and "encoder_hid_proj" not in k
    ]
    assert len(targeted) > 20
    assert all(not np.array_equal(plain_weights[k].numpy(), fused_weights[k].numpy()) for k in targeted)
    assert any(hasattr(p, "to_k_ip") for p in fused.attn_processors.values())
    engine = few_step_engines[arch]
    red = engine.swap(diffusion_job(object_image=diffusion_job().object_image.point(lambda v: 255 - v)))
    assert not np.array_equal(np.asarray(red), np.asarray(engine.swap(diffusion_job())))  # the object still counts


def test_few_step_without_the_lora_names_the_download(tiny_weights, tmp_path):
    shutil.copytree(tiny_weights / "sdxl", tmp_path / "sdxl")
    with pytest.raises(WeightsError, match=r"segswap weights download sdxl-lcm"):
        DiffusionEngine(ModelSet("sdxl", tmp_path / "sdxl"), FEW)


def test_a_corrupt_lora_is_a_weights_error(tiny_weights, tmp_path):
    shutil.copytree(tiny_weights / "sdxl", tmp_path / "sdxl")
    (tmp_path / LORA_SETS["sdxl"]).mkdir()
    (tmp_path / LORA_SETS["sdxl"] / LORA_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot load model set"):
        DiffusionEngine(ModelSet("sdxl", tmp_path / "sdxl"), FEW)


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_deepcache_runs_the_deep_blocks_once_every_interval(tiny_weights, arch):
    engine = DiffusionEngine(ModelSet(arch, tiny_weights / arch), CACHED)
    deep_calls: list[int] = []
    engine.pipe.unet.mid_block.resnets[0].register_forward_pre_hook(lambda module, args: deep_calls.append(1))
    shallow = unet_calls(engine)
    job = diffusion_job(steps=10)
    first = engine.swap(job)
    assert len(shallow) == 10 and len(deep_calls) == 4  # steps 0, 3, 6, 9 in full
    assert np.array_equal(np.asarray(first), np.asarray(engine.swap(job)))  # reset per image: same bytes
    uncached = DiffusionEngine(ModelSet(arch, tiny_weights / arch), DiffusionOptions(device="cpu")).swap(job)
    difference = np.abs(np.asarray(first, np.int16) - np.asarray(uncached, np.int16))
    assert 0 < difference.mean() < 20  # a cheaper estimate of the same image, not another image
    assert engine.step_cache.skipped == 12


def test_step_cache_predicts_flux2_steps_between_full_ones(tiny_flux2_weights):
    engine = Flux2Engine(model_set_at(tiny_flux2_weights / "flux2-klein-base"), CACHED)
    attention_runs: list[int] = []
    last_block = engine.pipe.transformer.single_transformer_blocks[-1]
    last_block.attn.register_forward_pre_hook(lambda module, args, kwargs: attention_runs.append(1), with_kwargs=True)
    job = diffusion_job(steps=10, guidance_scale=4.0)
    first = engine.swap(job)
    # Per guidance branch: steps 0-2 warm up, then one full step in three (4, 7): 5 of 10, twice.
    assert len(attention_runs) == 10
    assert np.array_equal(np.asarray(first), np.asarray(engine.swap(job)))
    plain = Flux2Engine(model_set_at(tiny_flux2_weights / "flux2-klein-base"), DiffusionOptions(device="cpu"))
    assert not np.array_equal(np.asarray(first), np.asarray(plain.swap(job)))


def test_the_distilled_flux2_runs_without_the_step_cache(tiny_flux2_weights, caplog):
    """TaylorSeer on the distilled model's 4 steps would predict only the last and largest one: it stays off
    there (with a warning), and the swap is the uncached one."""
    model_set = model_set_at(tiny_flux2_weights / "flux2-klein")
    with caplog.at_level("WARNING", logger="segswap.diffusion"):
        cached = Flux2Engine(model_set, CACHED)
    assert not cached.options.step_cache and "step cache: off on flux2-klein" in caplog.text
    attention_runs: list[int] = []
    last_block = cached.pipe.transformer.single_transformer_blocks[-1]
    last_block.attn.register_forward_pre_hook(lambda module, args, kwargs: attention_runs.append(1), with_kwargs=True)
    cached.swap(diffusion_job())
    assert len(attention_runs) == 4  # every step in full
    plain = Flux2Engine(model_set, DiffusionOptions(device="cpu"))
    assert cached.swap(diffusion_job()).tobytes() == plain.swap(diffusion_job()).tobytes()


def test_few_step_leaves_the_distilled_flux2_at_its_four_steps(tiny_flux2_weights):
    engine = Flux2Engine(model_set_at(tiny_flux2_weights / "flux2-klein"), FEW)
    assert engine.steps_for(diffusion_job(steps=50)) == 4


def test_settings_and_flags_switch_few_step_and_the_step_cache(monkeypatch):
    import argparse

    from server.cli.common import add_engine_flags, settings_from
    from server.settings import Settings

    assert not Settings().diffusion_options().few_step and not Settings().diffusion_options().step_cache
    monkeypatch.setenv("SEGSWAP_STEP_CACHE", "true")
    monkeypatch.setenv("SEGSWAP_STEP_CACHE_INTERVAL", "4")
    options = Settings().diffusion_options("cpu")
    assert options.step_cache and options.step_cache_interval == 4 and not options.few_step
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    assert settings_from(parser.parse_args(["--few-step"])).diffusion_options().few_step
    monkeypatch.setenv("SEGSWAP_STEP_CACHE_INTERVAL", "1")
    with pytest.raises(ValueError, match="step_cache_interval"):
        Settings()


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU"
)
def test_flux2_blocks_compile_and_fall_back_to_eager_when_the_compiler_fails(tiny_flux2_weights, caplog):
    """Regional compilation of FLUX.2's blocks gives the eager image; a compiler failure falls back to eager;
    with the step cache on, the blocks stay eager (TaylorSeer's hooks break their graphs)."""
    import torch._dynamo
    from torch._dynamo.exc import TorchDynamoException

    torch._dynamo.reset()
    model_set = model_set_at(tiny_flux2_weights / "flux2-klein")
    compiled = Flux2Engine(model_set, DiffusionOptions(device="cpu", compile=True))
    eager = Flux2Engine(model_set, DiffusionOptions(device="cpu"))
    assert compiled.compiled and not eager.compiled
    job = diffusion_job()
    expected = np.asarray(eager.swap(job), dtype=int)
    assert np.abs(np.asarray(compiled.swap(job), dtype=int) - expected).max() <= 3

    def broken(*args, **kwargs):
        raise TorchDynamoException("backend exploded")

    blocks = [m for m in compiled.pipe.transformer.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(blocks) == 2  # the tiny set's one double and one single block
    for block in blocks:
        block._compiled_call_impl = broken
    with caplog.at_level("WARNING", logger="segswap.diffusion"):
        assert np.array_equal(np.asarray(compiled.swap(job), dtype=int), expected)
    assert "torch.compile failed" in caplog.text and not compiled.compiled
    base = model_set_at(tiny_flux2_weights / "flux2-klein-base")
    assert not Flux2Engine(base, DiffusionOptions(device="cpu", compile=True, step_cache=True)).compiled
    torch._dynamo.reset()


def test_a_flux2_run_cut_short_leaves_no_cached_state_behind(tiny_flux2_weights):
    """The pipeline resets the step cache at its end; a run that fails midway never gets there, so the engine
    resets it at the start: the next job gives the same bytes as ever."""
    engine = Flux2Engine(model_set_at(tiny_flux2_weights / "flux2-klein-base"), CACHED)
    job = diffusion_job(steps=10, guidance_scale=4.0)
    first = np.asarray(engine.swap(job))

    def failing(step, total):
        if step == 5:
            raise RuntimeError("the caller went away")

    with pytest.raises(RuntimeError):
        engine.swap(diffusion_job(steps=10, guidance_scale=4.0, seed=99), progress=failing)
    assert np.array_equal(np.asarray(engine.swap(job)), first)
