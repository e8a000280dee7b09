"""FP8 (SEGSWAP_FP8): which linear layers are quantised, that a machine without float8 tensor cores refuses it at
load with a sentence, and the quantisation call itself on tiny engines (with torchao's int8 weight-only config,
which runs on a CPU: the float8 one asserts a GPU of compute capability 8.9+)."""

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

from pipelines import EngineUnavailable
from pipelines.engines.diffusion import fp8
from pipelines.engines.diffusion.engine import DiffusionEngine
from pipelines.engines.diffusion.fast_path import fuse_self_attention
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.engines.selection import diffusion_engine
from pipelines.models.model_sets import ModelSet, model_set_at
from server.settings import Settings
from tests.pipelines.jobs import diffusion_job


def test_quantisable_layers_of_the_real_sdxl_unet_skip_the_fused_views():
    from server.benchmark.full_models import build_component

    with torch.device("meta"):
        unet = build_component("sdxl", "unet")
    linears = [m for m in unet.modules() if isinstance(m, torch.nn.Linear)]
    assert fp8.quantizable(unet) == set(linears)  # every SDXL linear has sides in multiples of 16
    fused = fuse_self_attention(unet)
    chosen = fp8.quantizable(unet)
    attentions = [m for m in unet.modules() if getattr(m, "fused_projections", False)]
    views = {getattr(attention, f"to_{part}") for attention in attentions for part in "qkv"}
    assert fused == len(attentions) == 70 and len(views) == 3 * fused  # SDXL's 70 transformer blocks
    assert not views & chosen and {attention.to_qkv for attention in attentions} <= chosen
    assert len(chosen) == len(linears) - 2 * fused  # three views out, one fused layer in


def test_a_linear_with_odd_sides_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 10), torch.nn.Linear(10, 32))
    assert fp8.quantizable(model) == {model[0]}


def test_fp8_is_refused_at_load_without_float8_tensor_cores(tiny_weights, monkeypatch):
    options = Settings(fp8=True, device="cpu").diffusion_options()
    assert options.fp8 is True and DiffusionOptions().fp8 is False
    with pytest.raises(EngineUnavailable, match="SEGSWAP_FP8 needs"):
        diffusion_engine(ModelSet("sdxl", tiny_weights / "sdxl"), options)
    monkeypatch.setattr(fp8.importlib.util, "find_spec", lambda name: object())  # as if torchao were installed
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert fp8.unsupported(torch.device("cuda")) == (
        "SEGSWAP_FP8 needs compute capability 8.9+ (Ada or Hopper); NVIDIA A100-SXM4-80GB has 8.0"
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8.unsupported(torch.device("cuda")) is None
    assert "this engine is on cpu" in fp8.unsupported(torch.device("cpu"))


def test_quantising_the_unet_runs_through_the_engine(tiny_weights):
    torchao = pytest.importorskip("torchao.quantization")
    engine = DiffusionEngine(ModelSet("sdxl", tiny_weights / "sdxl"), DiffusionOptions(device="cpu"))
    before = np.asarray(engine.swap(diffusion_job(steps=3)), dtype=np.float64)
    chosen = fp8.quantizable(engine.pipe.unet)
    assert fp8.quantize_linears(engine.pipe.unet, torchao.Int8WeightOnlyConfig()) == len(chosen) > 0
    assert all(type(module.weight) is not torch.nn.Parameter for module in chosen)
    after = np.asarray(engine.swap(diffusion_job(steps=3)), dtype=np.float64)
    assert after.shape == before.shape and not np.array_equal(after, before)
    psnr = 10 * np.log10(255.0**2 / np.mean((after - before) ** 2))
    assert psnr > 20  # quantised weights move the output a little, not into another image


@pytest.mark.parametrize("arch", ["sdxl", "flux2-klein"])
def test_the_setting_quantises_the_denoiser_of_each_engine(tiny_weights, tiny_flux2_weights, monkeypatch, arch):
    """SEGSWAP_FP8 reaches the UNet (after q/k/v fusion) and FLUX.2's transformer; int8 stands in for float8."""
    torchao = pytest.importorskip("torchao.quantization")
    monkeypatch.setattr(fp8, "unsupported", lambda device: None)
    monkeypatch.setattr(fp8, "fp8_config", torchao.Int8WeightOnlyConfig)
    weights = (tiny_flux2_weights if arch.startswith("flux2") else tiny_weights) / arch
    engine = diffusion_engine(model_set_at(weights), DiffusionOptions(device="cpu", fp8=True))
    denoiser = engine.pipe.transformer if arch.startswith("flux2") else engine.pipe.unet
    quantised = [
        m for m in denoiser.modules() if isinstance(m, torch.nn.Linear) and type(m.weight) is not torch.nn.Parameter
    ]
    assert quantised and set(quantised) == fp8.quantizable(denoiser)
    assert engine.swap(diffusion_job(steps=2)).size == diffusion_job().main_image.size
