"""Tiny random-weight model sets in the exact layout of the real downloads.

The engine runs SD1.5 / SDXL inpainting with IP-Adapter (plain and Plus) and FLUX.2 [klein]
(tiny_flux2.py), but
no weights can be downloaded here, and the real ones are gigabytes anyway.
`make_tiny` builds the same architectures at toy size, with random weights,
and writes them the way the real repositories ship them:

* `base/`: a diffusers inpainting pipeline (`save_pretrained`), like
  `stable-diffusion-v1-5/stable-diffusion-inpainting` and
  `diffusers/stable-diffusion-xl-1.0-inpainting-0.1`;
* `ip_adapter/`: the `h94/IP-Adapter` layout, with the checkpoints in the
  original (not diffusers') key format and the ViT-H image encoder.

So the loader, the tests and the server all go through the very code that
real weights go through; only the numbers are small. Tokenizers are built by
hand (byte-level CLIP vocabulary, no merges), nothing touches the hub.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from pipelines.models.few_step import LORA_SETS
from pipelines.models.model_sets import MASK_SETS, SETS, ModelSet, model_set_at
from pipelines.models.single_file import export_single_file, strip_base_weights
from pipelines.models.tiny_flux2 import write_tiny_flux2
from pipelines.models.tiny_lora import write_lora
from pipelines.models.tiny_masks import write_tiny_owlv2, write_tiny_sam2
from pipelines.models.tiny_parts import clip_vocab, seed_component, write_clip_tokenizer

MAX_TOKENS = 77
SAMPLE_SIZE = 8  # latent side; with the 8x VAE the default image is 64x64

# Toy sizes. The real ones, for reference: SD1.5 cross-attention 768, SDXL 2048
# (768 + 1280 from its two text encoders), ViT-H hidden 1280 / projection 1024.
SD15_CROSS_DIM = 32
SDXL_TEXT_DIMS = (32, 32)  # text_encoder, text_encoder_2 hidden sizes
SDXL_POOLED_DIM = 32  # text_encoder_2 projection_dim
SDXL_TIME_EMBED_DIM = 8  # addition_time_embed_dim; inpaint uses 6 time ids
VISION_HIDDEN = 48  # Plus reads the penultimate hidden states (this size)
VISION_PROJECTION = 40  # plain reads image_embeds (this size)
RESAMPLER_DIM = 64  # diffusers infers heads = dim // 64
RESAMPLER_TOKENS = 16
PLAIN_TOKENS = 4


def make_tiny(
    out_dir: Path,
    *,
    seed: int = 0,
    sets: tuple[str, ...] = (*SETS, *MASK_SETS, *LORA_SETS.values()),
    single_file: bool = False,
) -> list[Path]:
    """Write tiny random-weight model sets, one folder per set name, laid out as a real download; returns the folders.

    An existing `<out_dir>/<set>` folder is replaced, so the same seed always leaves the same files. With
    `single_file`, each SD set's base is written as a single-file checkpoint in the original key format
    (`base.safetensors`, like a model shared on a model site) next to a config-only `base/`: same weights.
    """
    known = (*SETS, *MASK_SETS, *LORA_SETS.values())
    unets = {"sdxl": _sdxl_unet, "sd15": _sd15_unet}
    lora_archs = {name: arch for arch, name in LORA_SETS.items()}
    unknown = set(sets) - set(known)
    if unknown:
        raise ValueError(f"unknown model set(s) {sorted(unknown)}; known: {', '.join(known)}")
    writers = {"sam2": write_tiny_sam2, "owlv2": write_tiny_owlv2}
    folders = []
    for name in sets:
        folder = Path(out_dir) / name
        if name in writers:
            writers[name](folder, seed)
        elif name in lora_archs:  # the LoRA for the UNet the same seed gives
            shutil.rmtree(folder, ignore_errors=True)
            write_lora(folder, unets[lora_archs[name]](seed), seed)
        elif SETS[name] == "flux2":
            write_tiny_flux2(folder, distilled=name == "flux2-klein", seed=seed)
        else:
            _write_sd_set(ModelSet(SETS[name], folder), seed, single_file)
        folders.append(folder)
    return folders


def _write_sd_set(model_set: ModelSet, seed: int, single_file: bool) -> None:
    if model_set.folder.exists():
        shutil.rmtree(model_set.folder)
    unet = _write_base(model_set.arch, model_set.base, seed)
    _write_ip_adapter(model_set, unet, seed)
    if single_file:
        to_single_file(model_set.folder)


def to_single_file(set_dir: Path) -> Path:
    """Turn a diffusers-format set into the single-file layout, in place; returns the checkpoint path.

    Writes `<set_dir>/base.safetensors` (UNet, VAE, text encoders in the original key
    format) and deletes those weights from base/, keeping its configs and tokenizers.
    """
    model_set = model_set_at(set_dir)
    export_single_file(set_dir, model_set.checkpoint_file)
    strip_base_weights(model_set.base)
    return model_set.checkpoint_file


# ---------------------------------------------------------------- helpers


# ---------------------------------------------------------------- base pipeline


def _write_base(arch: str, base: Path, seed: int) -> UNet2DConditionModel:
    """Save the inpainting pipeline; returns its UNet (the adapters are shaped on it)."""
    pipe = _sd15_pipeline(seed) if arch == "sd15" else _sdxl_pipeline(seed)
    pipe.save_pretrained(base, safe_serialization=True)
    _write_tokenizer(base / "tokenizer", pad_token="<|endoftext|>")
    if arch == "sdxl":
        _write_tokenizer(base / "tokenizer_2", pad_token="!")
    return pipe.unet


def _sd15_pipeline(seed: int) -> StableDiffusionInpaintPipeline:
    return StableDiffusionInpaintPipeline(
        vae=_vae(seed, scaling_factor=0.18215),
        text_encoder=_text_encoder(seed, "text_encoder", SD15_CROSS_DIM),
        tokenizer=_tokenizer("<|endoftext|>"),
        unet=_sd15_unet(seed),
        scheduler=_sd15_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _sdxl_pipeline(seed: int) -> StableDiffusionXLInpaintPipeline:
    dim_1, dim_2 = SDXL_TEXT_DIMS
    return StableDiffusionXLInpaintPipeline(
        vae=_vae(seed, scaling_factor=0.13025, force_upcast=True),
        text_encoder=_text_encoder(seed, "text_encoder", dim_1),
        text_encoder_2=_text_encoder(seed, "text_encoder_2", dim_2, projection_dim=SDXL_POOLED_DIM),
        tokenizer=_tokenizer("<|endoftext|>"),
        tokenizer_2=_tokenizer("!"),
        unet=_sdxl_unet(seed),
        scheduler=_sdxl_scheduler(),
        image_encoder=None,
        feature_extractor=None,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _sd15_unet(seed: int) -> UNet2DConditionModel:
    """SD1.5's block kinds (attention down first, plain up first), two levels deep.

    layers_per_block=2 gives up blocks 3 attentions, so the style block
    `up_blocks.1.attentions.1` exists as in the real UNet.
    """
    seed_component(seed, "unet")
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        in_channels=9,  # 4 noisy latents + 1 mask + 4 masked-image latents
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=SD15_CROSS_DIM,
    )


def _sdxl_unet(seed: int) -> UNet2DConditionModel:
    """SDXL's block kinds and text_time conditioning, three levels like the real one.

    Gives InstantStyle's blocks: style `up_blocks.0.attentions.1`, layout
    `down_blocks.2.attentions.1`.
    """
    seed_component(seed, "unet")
    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        in_channels=9,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=sum(SDXL_TEXT_DIMS),
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=SDXL_POOLED_DIM + 6 * SDXL_TIME_EMBED_DIM,
    )


def _vae(seed: int, **config) -> AutoencoderKL:
    """Four levels like the real VAE (8x downscale), 4 latent channels.

    Narrow at full resolution, where nearly all of its cost is.
    """
    seed_component(seed, "vae")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        sample_size=SAMPLE_SIZE * 8,
        **config,
    )


def _sd15_scheduler() -> DDIMScheduler:
    """The config the SD1.5 inpainting repo ships."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    """The config the SDXL inpainting repo ships."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )


def _text_encoder(seed: int, name: str, hidden: int, projection_dim: int | None = None):
    """CLIPTextModel, or CLIPTextModelWithProjection when projection_dim is given."""
    config = CLIPTextConfig(
        vocab_size=len(clip_vocab()),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim or hidden,
        hidden_act="quick_gelu" if projection_dim is None else "gelu",
        # The real configs keep CLIP's legacy ids (eos 2 = pool at the highest id, which
        # is <|endoftext|> here as in the real vocab): same pooling path as real weights.
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    seed_component(seed, name)
    model_cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return model_cls(config)


def _tokenizer(pad_token: str) -> CLIPTokenizer:
    return CLIPTokenizer(vocab=clip_vocab(), merges=[], model_max_length=MAX_TOKENS, pad_token=pad_token)


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    """Replace what save_pretrained wrote (transformers 5: one tokenizer.json) with the files the real repos
    ship (vocab.json, merges.txt, two configs): transformers converts those on load, as for real weights."""
    shutil.rmtree(folder)
    write_clip_tokenizer(folder, pad_token, MAX_TOKENS)


# ---------------------------------------------------------------- IP-Adapter, original format


class _ImageProjModel(nn.Module):
    """The original IP-Adapter projection: CLIP image_embeds -> 4 context tokens."""

    def __init__(self, cross_attention_dim: int, clip_embeddings_dim: int, tokens: int = PLAIN_TOKENS):
        super().__init__()
        self.proj = nn.Linear(clip_embeddings_dim, tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)


class _PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class _Resampler(nn.Module):
    """The original IP-Adapter Plus Resampler (perceiver over penultimate CLIP states)."""

    def __init__(self, dim: int, embedding_dim: int, output_dim: int, *, depth: int = 4, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, RESAMPLER_TOKENS, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, dim_head=64, heads=dim // 64), _feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )


class _IPAttnWeights(nn.Module):
    """The trained part of the original IPAttnProcessor: image key/value projections."""

    def __init__(self, hidden_size: int, cross_attention_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)


def _ip_attn_modules(unet: UNet2DConditionModel) -> nn.ModuleList:
    """One entry per unet attention processor, in order, as the original training saves them.

    Self-attention (attn1) processors have no weights, so the cross-attention
    (attn2) ones land on the odd indices 1, 3, 5, ...
    """
    modules = []
    for name in unet.attn_processors:
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if name.endswith("attn1.processor"):
            modules.append(nn.Module())
        else:
            modules.append(_IPAttnWeights(attn.to_k.out_features, unet.config.cross_attention_dim))
    return nn.ModuleList(modules)


def _ip_checkpoint(image_proj: nn.Module, ip_adapter: nn.Module) -> dict[str, torch.Tensor]:
    """Flatten like the real .safetensors files: `image_proj.*` and `ip_adapter.*`."""
    parts = {"image_proj": image_proj, "ip_adapter": ip_adapter}
    return {
        f"{prefix}.{key}": value.detach().contiguous()
        for prefix, module in parts.items()
        for key, value in module.state_dict().items()
    }


def _write_ip_adapter(model_set: ModelSet, unet: UNet2DConditionModel, seed: int) -> None:
    cross_dim = unet.config.cross_attention_dim
    variants = {
        "plain": lambda: _ImageProjModel(cross_dim, VISION_PROJECTION),
        "plus": lambda: _Resampler(RESAMPLER_DIM, VISION_HIDDEN, cross_dim),
    }
    for variant, make_proj in variants.items():
        seed_component(seed, f"{model_set.arch}-ip-adapter-{variant}")
        checkpoint = _ip_checkpoint(make_proj(), _ip_attn_modules(unet))
        path = replace(model_set, variant=variant).adapter_file
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(checkpoint, path, metadata={"format": "pt"})
    _write_image_encoder(model_set.image_encoder, seed)


def _write_image_encoder(folder: Path, seed: int) -> None:
    """The CLIP ViT-H image encoder, at toy size: config.json + model.safetensors."""
    config = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        projection_dim=VISION_PROJECTION,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        hidden_act="gelu",
    )
    seed_component(seed, "image_encoder")
    CLIPVisionModelWithProjection(config).save_pretrained(folder)


if __name__ == "__main__":  # python -m pipelines.models.tiny OUT_DIR [SEED]
    import sys

    for folder in make_tiny(Path(sys.argv[1]), seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0):
        print(folder)
