"""The fast path: embedding cache (same bytes as without it), fused self-attention, SDPA processors,
compilation, VAE tiling threshold, and the settings that switch each piece."""

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("diffusers")

import torch  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

from pipelines import SwapJob
from pipelines.engines.diffusion.conditioning import LAYOUT_SCALE, STYLE_SCALE, SUBJECT_SCALE
from pipelines.engines.diffusion.embedding_cache import EmbeddingCache
from pipelines.engines.diffusion.engine import DiffusionEngine
from pipelines.engines.diffusion.ip_masks import GridMaskedIPAdapterProcessor, GridMaskedIPAdapterProcessorClassic
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.imageops import image_digest
from pipelines.models.model_sets import ModelSet
from tests.conftest import noise_image
from tests.pipelines.jobs import diffusion_job  # noqa: E402

NO_CACHE = DiffusionOptions(embed_cache_size=0)


def job(**overrides) -> SwapJob:
    return diffusion_job(**overrides)


def ip_processors(engine):
    return {n: p for n, p in engine.pipe.unet.attn_processors.items() if hasattr(p, "to_k_ip")}


@pytest.mark.parametrize("arch,variant", [("sd15", "plus"), ("sdxl", "plus"), ("sdxl", "plain")])
def test_cached_embeddings_give_identical_bytes(tiny_weights, arch, variant):
    model_set = ModelSet(arch, tiny_weights / arch, variant)
    cached, uncached = DiffusionEngine(model_set), DiffusionEngine(model_set, NO_CACHE)
    assert cached.embeddings.enabled and not uncached.embeddings.enabled
    cases = [
        job(),
        job(),  # a cache hit
        job(guidance_scale=1.0),  # no CFG: the positive half of the cached embeddings
        job(negative_prompt="blurry", horizontal_repeat=2, vertical_repeat=3),
        job(object_image=Image.new("RGBA", (30, 20), (220, 20, 200, 255)), prompt=""),
    ]
    for case in cases:
        assert cached.swap(case).tobytes() == uncached.swap(case).tobytes()
    assert cached.embeddings.hits >= 3 and cached.embeddings.misses >= 4


def test_cache_key_is_the_object_content_and_repeats(tiny_weights):
    engine = DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15", "plus"))
    pattern = noise_image((24, 24), seed=9)
    first = engine.swap(job(object_image=pattern))
    same_pixels = noise_image((24, 24), seed=9)  # another object, same content: a hit
    assert engine.swap(job(object_image=same_pixels)).tobytes() == first.tobytes()
    assert engine.embeddings.hits == 2  # image and prompt
    assert engine.swap(job(object_image=pattern, horizontal_repeat=2)).tobytes() != first.tobytes()
    assert engine.swap(job(object_image=noise_image((24, 24), seed=10))).tobytes() != first.tobytes()
    assert engine.embeddings.misses == 4  # first image, its prompt, the repeat, the other object


def test_embedding_cache_is_a_bounded_lru():
    cache = EmbeddingCache(2)
    calls = []

    def make(value):
        return lambda: calls.append(value) or value

    assert cache.get("a", make(1)) == 1 and cache.get("b", make(2)) == 2
    assert cache.get("a", make(9)) == 1  # hit, and "a" becomes the most recent
    cache.get("c", make(3))  # evicts "b"
    assert len(cache) == 2 and cache.get("b", make(4)) == 4
    assert calls == [1, 2, 3, 4]
    assert not EmbeddingCache(0).enabled
    assert image_digest(Image.new("RGB", (2, 2))) != image_digest(Image.new("RGBA", (2, 2)))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_fused_self_attention_keeps_ip_adapter(tiny_weights, arch):
    model_set = ModelSet(arch, tiny_weights / arch, "plus")
    fused = DiffusionEngine(model_set)
    unfused = DiffusionEngine(model_set, DiffusionOptions(fuse_qkv=False))
    kinds = {type(p) for p in fused.pipe.unet.attn_processors.values()}
    assert FusedAttnProcessor2_0 in kinds and GridMaskedIPAdapterProcessor in kinds
    assert FusedAttnProcessor2_0 not in {type(p) for p in unfused.pipe.unet.attn_processors.values()}
    assert len(ip_processors(fused)) == len(ip_processors(unfused)) > 0
    # to_q/k/v are views of the fused weight: nothing held twice
    attn = next(m for n, m in fused.pipe.unet.named_modules() if n.endswith("attn1") and hasattr(m, "to_qkv"))
    assert attn.to_q.weight.untyped_storage().data_ptr() == attn.to_qkv.weight.untyped_storage().data_ptr()
    # same result up to float rounding, and the object image still steers it
    a, b = np.asarray(fused.swap(job()), dtype=int), np.asarray(unfused.swap(job()), dtype=int)
    assert np.abs(a - b).max() <= 2
    other = job(object_image=Image.new("RGB", (24, 24), (220, 20, 200)))
    assert fused.swap(other).tobytes() != fused.swap(job()).tobytes()


def test_sdpa_off_uses_the_classic_processors_with_the_same_adapter(tiny_weights):
    model_set = ModelSet("sdxl", tiny_weights / "sdxl", "plus")
    sdpa = DiffusionEngine(model_set, DiffusionOptions(fuse_qkv=False))
    classic = DiffusionEngine(model_set, DiffusionOptions(sdpa=False))
    sdpa_kinds = {type(p) for p in sdpa.pipe.unet.attn_processors.values()}
    assert sdpa_kinds == {AttnProcessor2_0, GridMaskedIPAdapterProcessor}
    classic_kinds = {type(p) for p in classic.pipe.unet.attn_processors.values()}
    assert classic_kinds == {AttnProcessor, GridMaskedIPAdapterProcessorClassic}
    assert {type(p) for p in classic.pipe.vae.attn_processors.values()} == {AttnProcessor}
    classic.swap(job(subject_strength=0.25, fashion_strength=0.75))
    expected = {(SUBJECT_SCALE * 0.25,), (STYLE_SCALE * 0.75,), (LAYOUT_SCALE * 0.25,)}
    assert {tuple(p.scale) for p in ip_processors(classic).values()} == expected
    a, b = np.asarray(sdpa.swap(job()), dtype=int), np.asarray(classic.swap(job()), dtype=int)
    assert np.abs(a - b).max() <= 2


def test_vae_tiling_only_above_the_threshold(tiny_weights):
    model_set = ModelSet("sd15", tiny_weights / "sd15", "plain")
    default = DiffusionEngine(model_set)
    default.swap(job())
    assert not default.pipe.vae.use_tiling  # crop-and-stitch keeps the processed area at native size
    low = DiffusionEngine(model_set, DiffusionOptions(vae_tiling_above_pixels=default.native_side**2 // 2))
    low.swap(job())
    assert low.pipe.vae.use_tiling
    always = DiffusionEngine(model_set, DiffusionOptions(vae_tiling=True))
    always.swap(job())
    assert always.pipe.vae.use_tiling


def test_stage_timings_are_reported(tiny_weights):
    engine = DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15", "plain"))
    engine.swap(job())
    assert set(engine.last_timings) == {"mask_ops_s", "embeds_s", "model_s"}
    assert all(value >= 0 for value in engine.last_timings.values()) and engine.last_timings["model_s"] > 0


def test_auto_switches_follow_the_device():
    cpu, cuda = DiffusionOptions().resolved("cpu"), DiffusionOptions().resolved("cuda")
    assert cpu.compile is False and cpu.channels_last is False
    # channels-last is opt-in everywhere: CUDA's GroupNorm does not keep the layout (see DiffusionOptions).
    assert cuda.compile is True and cuda.channels_last is False
    assert DiffusionOptions(channels_last=True).resolved("cuda").channels_last is True
    assert DiffusionOptions(compile=False).resolved("cuda").compile is False
    assert DiffusionOptions().sdpa and DiffusionOptions().fuse_qkv and DiffusionOptions().embed_cache_size > 0


def test_settings_switch_each_piece(monkeypatch):
    from server.settings import Settings

    assert Settings().diffusion_options().compile is None  # auto
    for name, value in {
        "COMPILE": "false",
        "CHANNELS_LAST": "true",
        "SDPA": "false",
        "FUSE_QKV": "false",
        "EMBED_CACHE_SIZE": "0",
        "VAE_TILING_ABOVE_PIXELS": "1000",
        "VAE_UPCAST": "true",
    }.items():
        monkeypatch.setenv(f"SEGSWAP_{name}", value)
    options = Settings().diffusion_options("cpu")
    assert (options.compile, options.channels_last, options.sdpa, options.fuse_qkv) == (False, True, False, False)
    assert options.embed_cache_size == 0 and options.vae_tiling_above_pixels == 1000 and options.device == "cpu"
    assert options.vae_upcast is True and Settings(vae_upcast="auto").diffusion_options().vae_upcast is None


def test_server_warm_up_runs_at_the_native_size(tiny_weights):
    """The server's warm-up swap and erase are processed at the native square, so compilation happens before
    readiness."""
    from server.serving.workers import warm_up

    engine = DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15", "plain"))
    sizes = []
    original = engine.pipe.__call__

    class Spy:
        def __call__(self, **kwargs):
            sizes.append((kwargs["width"], kwargs["height"]))
            return original(**kwargs)

    engine.pipe = _Wrapped(engine.pipe, Spy())
    warm_up(engine)
    assert sizes == [(engine.native_side, engine.native_side)] * 2


class _Wrapped:
    """A pipeline whose call goes through `call`; everything else (setting its scheduler too) is the pipeline's."""

    def __init__(self, pipe, call):
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_call", call)

    def __call__(self, **kwargs):
        return self._call(**kwargs)

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __setattr__(self, name, value):
        setattr(self._pipe, name, value)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU"
)
def test_compiled_blocks_run_and_survive_strength_changes(tiny_weights):
    import torch._dynamo

    torch._dynamo.reset()
    model_set = ModelSet("sd15", tiny_weights / "sd15", "plain")
    compiled = DiffusionEngine(model_set, DiffusionOptions(compile=True))
    eager = DiffusionEngine(model_set)
    assert compiled.options.compile
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    warm = job(main_image=noise_image((64, 64), 3), mask_image=mask)
    for case in (
        warm,
        dataclasses.replace(warm, subject_strength=0.5),
        dataclasses.replace(warm, subject_strength=0.0),
    ):
        a, b = np.asarray(compiled.swap(case), dtype=int), np.asarray(eager.swap(case), dtype=int)
        assert np.abs(a - b).max() <= 3
    torch._dynamo.reset()


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU"
)
def test_new_strengths_and_boxes_in_one_bucket_do_not_recompile(tiny_weights):
    """After warm-up, six swaps with other subject and fashion strengths (other IP-Adapter scales, another
    start, a zero scale) and other boxes of the same bucket compile nothing new."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    engine = DiffusionEngine(ModelSet("sdxl", tiny_weights / "sdxl"), DiffusionOptions(compile=True))

    def swap(box, subject, fashion):
        mask = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(mask).rectangle(box, fill=255)
        scene = noise_image((96, 96), 3)
        engine.swap(job(main_image=scene, mask_image=mask, subject_strength=subject, fashion_strength=fashion))

    swap((30, 30, 60, 60), 1.0, 1.0)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "nothing was compiled"
    for box, subject, fashion in [
        ((28, 32, 58, 62), 0.7, 0.3),
        ((34, 30, 64, 60), 0.4, 1.0),
        ((30, 30, 60, 60), 0.0, 0.5),
        ((25, 25, 55, 55), 0.9, 0.0),
        ((32, 28, 62, 58), 0.55, 0.8),
        ((30, 31, 60, 61), 1.0, 1.0),
    ]:
        swap(box, subject, fashion)
    assert counters["stats"]["unique_graphs"] - graphs <= 1
    torch._dynamo.reset()


def test_a_compiler_failure_falls_back_to_eager(tiny_weights, caplog):
    """Compilation is an optimisation: if it fails on some machine, the swap still succeeds, eagerly."""
    from torch._dynamo.exc import TorchDynamoException

    model_set = ModelSet("sd15", tiny_weights / "sd15", "plain")
    engine, eager = DiffusionEngine(model_set, DiffusionOptions(compile=True)), DiffusionEngine(model_set)

    def broken(*args, **kwargs):
        raise TorchDynamoException("backend exploded")

    blocks = [m for m in engine.pipe.unet.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert blocks
    for block in blocks:
        block._compiled_call_impl = broken
    with caplog.at_level("WARNING", logger="segswap.diffusion"):
        out = engine.swap(job())
    assert "torch.compile failed" in caplog.text and engine.options.compile is False
    assert out.tobytes() == eager.swap(job()).tobytes()
    assert not any(getattr(m, "_compiled_call_impl", None) for m in engine.pipe.unet.modules())


@pytest.mark.parametrize(("vae_upcast", "encodes_in"), [(None, torch.bfloat16), (True, torch.float32)])
def test_bf16_encodes_without_a_float32_round_trip_unless_asked(tiny_weights, vae_upcast, encodes_in):
    """SDXL's VAE asks diffusers to encode in float32 (`force_upcast`, for float16's overflow): the whole VAE
    is cast up and back on both of a swap's encodes. In bfloat16 that is needless and off by default."""
    options = DiffusionOptions(device="cpu", dtype="bfloat16", vae_upcast=vae_upcast)
    engine = DiffusionEngine(ModelSet("sdxl", tiny_weights / "sdxl"), options)
    dtypes = []
    handle = engine.pipe.vae.encoder.register_forward_pre_hook(lambda m, args: dtypes.append(m.conv_in.weight.dtype))
    engine.swap(job(steps=2))
    handle.remove()
    assert dtypes and set(dtypes) == {encodes_in}
    assert engine.pipe.vae.dtype == torch.bfloat16  # back where it was either way


def test_float16_keeps_the_vaes_upcast(tiny_weights):
    options = DiffusionOptions(device="cpu", dtype="float16")
    engine = DiffusionEngine(ModelSet("sdxl", tiny_weights / "sdxl"), options)
    assert engine.pipe.vae.config.force_upcast is True
