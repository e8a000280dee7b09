"""Per-request LoRAs on SD1.5, SDXL and FLUX.2 [klein]: loaded once, switched without a trace."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import Flux2Transformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import FusedAttnProcessor2_0

from pipelines.engines.composite import CompositeEngine
from pipelines.engines.diffusion.engine import DiffusionEngine
from pipelines.engines.diffusion.flux2 import Flux2Engine
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.errors import InvalidInput
from pipelines.models.loras import lora_digest, lora_names, lora_path
from pipelines.models.model_sets import ModelSet, model_set_at
from pipelines.models.tiny_lora import write_request_lora
from pipelines.models.weights import sha256_file
from tests.pipelines.jobs import diffusion_job

CPU = DiffusionOptions(device="cpu")


def with_loras(source, folder, engine_class, model_set, denoiser, prefix: str, options=CPU):
    """The set copied with two LoRAs in its loras/ folder (written before the engine loads, as an operator's)."""
    shutil.copytree(source, folder)
    model = denoiser.from_pretrained(folder / "base" / prefix)
    for seed, name in enumerate(("style-a", "style.b")):
        write_request_lora(folder / "loras" / f"{name}.safetensors", model, prefix, seed)
    return engine_class(model_set(folder), options)


@pytest.fixture(scope="module", params=["sd15", "sdxl", "flux2-klein"])
def engine(request, tiny_weights, tiny_flux2_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-sets") / request.param
    if request.param == "flux2-klein":
        source = tiny_flux2_weights / request.param
        return with_loras(source, folder, Flux2Engine, model_set_at, Flux2Transformer2DModel, "transformer")
    arch = request.param
    set_at = lambda f: ModelSet(arch, f)  # noqa: E731
    return with_loras(tiny_weights / arch, folder, DiffusionEngine, set_at, UNet2DConditionModel, "unet")


def pixels(engine, **overrides) -> np.ndarray:
    return np.asarray(engine.swap(diffusion_job(**overrides)))


def test_a_lora_changes_the_output_and_switching_back_leaves_no_trace(engine):
    plain = pixels(engine)
    styled = pixels(engine, lora="style-a")
    assert not np.array_equal(plain, styled)
    assert np.array_equal(pixels(engine), plain)
    assert np.array_equal(pixels(engine, lora="style-a"), styled)


def test_two_loras_give_different_outputs_and_each_its_own_again(engine):
    first, second = pixels(engine, lora="style-a"), pixels(engine, lora="style.b")
    assert not np.array_equal(first, second)
    assert np.array_equal(pixels(engine, lora="style-a"), first)


def test_lora_scale_weighs_it_and_zero_is_none(engine):
    assert np.array_equal(pixels(engine, lora="style-a", lora_scale=0.0), pixels(engine))
    assert not np.array_equal(pixels(engine, lora="style-a", lora_scale=0.5), pixels(engine, lora="style-a"))


def test_a_set_with_loras_keeps_q_k_v_apart_so_every_lora_layer_runs(engine):
    if isinstance(engine, DiffusionEngine):
        assert not any(isinstance(p, FusedAttnProcessor2_0) for p in engine.pipe.unet.attn_processors.values())


def test_an_unknown_lora_names_the_available_ones(engine):
    with pytest.raises(InvalidInput, match=r"available: style-a, style\.b") as caught:
        engine.swap(diffusion_job(lora="nope"))
    assert caught.value.field == "lora"


@pytest.mark.parametrize("name", ["../sd15/loras/style-a", "loras/style-a", "..", ".hidden", "a\\b", "/etc/passwd"])
def test_a_path_like_name_is_refused(engine, name):
    with pytest.raises(InvalidInput, match="plain file name"):
        engine.swap(diffusion_job(lora=name))


def test_the_loaded_lora_is_noted_with_its_sha256(engine):
    engine.swap(diffusion_job(lora="style.b"))
    path = lora_path(engine.model_set.folder, "style.b")
    assert lora_digest(engine.name, "style.b") == sha256_file(path)
    assert lora_names(engine.model_set.folder) == ["style-a", "style.b"]


def test_the_composite_engine_says_loras_need_a_diffusion_set():
    with pytest.raises(InvalidInput, match="need a diffusion model set"):
        CompositeEngine().swap(diffusion_job(lora="style-a"))


@pytest.mark.parametrize("name", ["sd15", "flux2-klein"])
def test_switching_loras_on_a_compiled_denoiser_compiles_nothing_new(name, tiny_weights, tiny_flux2_weights, tmp_path):
    """Hot-swap: after warm-up (none, one LoRA, none again: the slot at scale 0 is a graph of its own), another
    LoRA, other scales and none compile no new graph, and each output matches the eager engine's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    if name == "flux2-klein":
        parts = (tiny_flux2_weights / name, Flux2Engine, model_set_at, Flux2Transformer2DModel, "transformer")
    else:
        parts = (tiny_weights / name, DiffusionEngine, lambda f: ModelSet("sd15", f), UNet2DConditionModel, "unet")
    source, engine_class, set_at, denoiser, prefix = parts
    compiled = DiffusionOptions(device="cpu", compile=True)
    engine = with_loras(source, tmp_path / name, engine_class, set_at, denoiser, prefix, compiled)
    eager = engine_class(set_at(tmp_path / name), CPU)
    for fields in ({}, {"lora": "style-a"}, {}):
        pixels(engine, **fields)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and engine.options.compile, "nothing was compiled"
    for fields in (
        {"lora": "style.b"},
        {},
        {"lora": "style-a", "lora_scale": 1.5},
        {"lora": "style.b", "lora_scale": 0.5},
    ):
        difference = pixels(engine, **fields).astype(int) - pixels(eager, **fields).astype(int)
        assert np.abs(difference).max() <= 1, fields  # the compiled kernels round a little differently
    assert counters["stats"]["unique_graphs"] == graphs and engine.options.compile
    torch._dynamo.reset()


def test_a_request_lora_applies_on_top_of_the_fused_few_step_lora(tiny_weights, tmp_path):
    shutil.copytree(tiny_weights / "sd15-lcm", tmp_path / "sd15-lcm")
    set_at = lambda f: ModelSet("sd15", f)  # noqa: E731
    few = DiffusionOptions(device="cpu", few_step=True)
    engine = with_loras(
        tiny_weights / "sd15", tmp_path / "sd15", DiffusionEngine, set_at, UNet2DConditionModel, "unet", few
    )
    plain = pixels(engine)
    assert not np.array_equal(pixels(engine, lora="style-a"), plain)
    assert np.array_equal(pixels(engine), plain)


def test_a_lora_that_cannot_load_is_refused_and_the_engine_keeps_working(tiny_weights, tmp_path):
    set_at = lambda f: ModelSet("sd15", f)  # noqa: E731
    engine = with_loras(tiny_weights / "sd15", tmp_path / "sd15", DiffusionEngine, set_at, UNet2DConditionModel, "unet")
    (tmp_path / "sd15" / "loras" / "broken.safetensors").write_bytes(b"not a LoRA")
    plain, styled = pixels(engine), pixels(engine, lora="style-a")
    with pytest.raises(InvalidInput, match="cannot apply LoRA 'broken'") as refused:
        engine.swap(diffusion_job(lora="broken"))
    assert str(tmp_path) not in str(refused.value)  # the client's answer names no server folder
    assert np.array_equal(pixels(engine), plain) and np.array_equal(pixels(engine, lora="style-a"), styled)
    assert not np.array_equal(pixels(engine, lora="style.b"), styled)
    reads = []
    engine.pipe.load_lora_weights = lambda *args, **kwargs: reads.append(args)  # any read from here on
    for _ in range(3):  # refused again without reading the file again
        with pytest.raises(InvalidInput, match="cannot apply LoRA 'broken'"):
            engine.swap(diffusion_job(lora="broken"))
    assert reads == []
    (tmp_path / "sd15" / "loras" / "broken.safetensors").write_bytes(b"replaced by the operator")
    engine.loras.check("broken")  # a changed file is no longer refused before it is read again


# ---------------------------------------------------------------- what the denoiser receives with a LoRA


def write_text_encoder_lora(path, unet_folder, text_encoders: dict, seed: int = 0):
    """A request LoRA with layers on the UNet and on the text encoders (CLIP's attention projections), as many
    kohya SD/SDXL LoRAs ship: diffusers loads every part of it."""
    from safetensors.torch import load_file, save_file

    write_request_lora(path, UNet2DConditionModel.from_pretrained(unet_folder), "unet", seed)
    tensors = load_file(str(path))
    generator = torch.Generator().manual_seed(seed)
    for prefix, encoder in text_encoders.items():
        for name, module in encoder.named_modules():
            if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")) and isinstance(module, torch.nn.Linear):
                tensors[f"{prefix}.{name}.lora_A.weight"] = torch.randn((4, module.in_features), generator=generator)
                tensors[f"{prefix}.{name}.lora_B.weight"] = torch.randn((module.out_features, 4), generator=generator)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))


def unet_inputs(engine, **overrides) -> dict[str, torch.Tensor]:
    """The text conditioning the UNet receives at its first call of a swap (and its first output)."""
    seen: dict[str, torch.Tensor] = {}

    def before(module, args, kwargs):
        if not seen:
            seen["text"] = kwargs["encoder_hidden_states"].detach().clone()
            added = kwargs.get("added_cond_kwargs") or {}
            if "text_embeds" in added:
                seen["pooled"] = added["text_embeds"].detach().clone()

    def after(module, args, output):
        seen.setdefault("output", output[0].detach().clone())

    handles = [
        engine.pipe.unet.register_forward_pre_hook(before, with_kwargs=True),
        engine.pipe.unet.register_forward_hook(after),
    ]
    try:
        engine.swap(diffusion_job(**overrides))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_a_lora_on_the_text_encoders_conditions_the_unet_with_the_embedding_cache_on(tiny_weights, tmp_path, arch):
    """The prompt embeddings a cached swap hands the UNet are those the pipeline computes with the request's LoRA
    (and scale) on the text encoders, and without it when the request names none, whatever ran before."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = tmp_path / arch
    shutil.copytree(tiny_weights / arch, folder)
    encoders = {"text_encoder": CLIPTextModel.from_pretrained(folder / "base" / "text_encoder")}
    if arch == "sdxl":
        encoders["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(folder / "base" / "text_encoder_2")
    write_text_encoder_lora(folder / "loras" / "words.safetensors", folder / "base" / "unet", encoders)
    cached = DiffusionEngine(ModelSet(arch, folder), CPU)
    uncached = DiffusionEngine(ModelSet(arch, folder), DiffusionOptions(device="cpu", embed_cache_size=0))
    runs = ({}, {"lora": "words"}, {"lora": "words", "lora_scale": 0.5}, {}, {"lora": "words"})
    for fields in runs:
        got, expected = unet_inputs(cached, **fields), unet_inputs(uncached, **fields)
        assert set(got) == set(expected)
        for key in ("text", "pooled"):
            if key in expected:
                assert torch.equal(got[key], expected[key]), (fields, key)
    assert not torch.equal(unet_inputs(uncached, lora="words")["text"], unet_inputs(uncached)["text"])


def test_a_lora_added_after_load_runs_every_layer_of_the_unet(tiny_weights, tmp_path):
    """An operator may add a LoRA file while the engine runs (the folder is read as it is now): its layers on the
    self-attention's q, k and v run, as on an engine that found it at load (no fused q/k/v matmul skips them)."""
    folder = tmp_path / "sd15"
    shutil.copytree(tiny_weights / "sd15", folder)
    engine = DiffusionEngine(ModelSet("sd15", folder), CPU)
    assert any(isinstance(p, FusedAttnProcessor2_0) for p in engine.pipe.unet.attn_processors.values())
    plain = unet_inputs(engine)["output"]
    unet = UNet2DConditionModel.from_pretrained(folder / "base" / "unet")
    write_request_lora(folder / "loras" / "late.safetensors", unet, "unet", 0)
    found_at_load = DiffusionEngine(ModelSet("sd15", folder), CPU)
    styled = unet_inputs(engine, lora="late")["output"]
    assert torch.allclose(styled, unet_inputs(found_at_load, lora="late")["output"], atol=1e-5)
    assert torch.allclose(unet_inputs(engine)["output"], plain, atol=1e-5)  # and none is none again
