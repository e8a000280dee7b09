"""Full-size SDXL / SD1.5 inpainting model sets with random weights, from the configs in server/benchmark/configs/.

Same architectures, parameter counts and FLOPs as the real downloads (the configs are the real ones:
UNet with 9 input channels, VAE, CLIP text encoders, the ViT-H image encoder, IP-Adapter shapes), written
in the layout `pipelines.models.model_sets` loads, so the engine and the plain-diffusers baseline load them
exactly as they load real weights. Nothing is downloaded: the tokenizers are the byte-level ones the
tiny sets use (their ids fit the 49408-entry embedding; the prompt is padded to 77 tokens either way).

Parameter counts (checked by tests/test_bench.py on the meta device):
SDXL inpainting UNet 2,567,478,084; VAE 83,653,863; CLIP-L text 123,060,480; bigG text 694,659,840;
SD1.5 inpainting UNet 859,535,364; ViT-H image encoder 632,076,800.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from pipelines.models.model_sets import ModelSet

CONFIGS = Path(__file__).resolve().parent / "configs"
PARAMETER_COUNTS = {
    ("sdxl", "unet"): 2_567_478_084,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,
    ("sd15", "unet"): 859_535_364,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,
    ("ip_adapter", "image_encoder"): 632_076_800,
}
MARKER = ".bench-full-set"


def config(path: str) -> dict:
    """One shipped config, without its `_comment` / `_class_name` bookkeeping keys."""
    data = json.loads((CONFIGS / path).read_text())
    return {key: value for key, value in data.items() if not key.startswith("_")}


def build_component(arch: str, part: str):
    """One model of a set, randomly initialised, on the current default device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    if part == "unet":
        return UNet2DConditionModel.from_config(config(f"{arch}/unet.json"))
    if part == "vae":
        return AutoencoderKL.from_config(config(f"{arch}/vae.json"))
    if part == "text_encoder":
        return CLIPTextModel(CLIPTextConfig(**config(f"{arch}/text_encoder.json")))
    if part == "text_encoder_2":
        return CLIPTextModelWithProjection(CLIPTextConfig(**config(f"{arch}/text_encoder_2.json")))
    if part == "image_encoder":
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**config("ip_adapter/image_encoder.json")))
    raise ValueError(f"unknown part {part!r}")


def _fingerprint(arch: str, variant: str, dtype: torch.dtype) -> str:
    digest = hashlib.sha256(f"{arch}:{variant}:{dtype}".encode())
    for path in sorted(CONFIGS.rglob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_full(
    out_dir: Path,
    arch: str,
    variant: str = "plus",
    dtype: torch.dtype = torch.bfloat16,
    device: str | None = None,
    seed: int = 0,
) -> Path:
    """Write (or reuse) the full-size set `<out_dir>/<arch>` with random weights; returns the set folder.

    Built on `device` (default: CUDA when there is one: initialising 2.6 B parameters on a CPU takes
    minutes) and saved in `dtype`. A set written earlier from the same configs is reused.
    """
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    from pipelines.engines.diffusion.runtime import quiet_libraries
    from pipelines.models import tiny

    model_set = ModelSet(arch, Path(out_dir) / arch, variant)
    set_dir = model_set.folder
    fingerprint = _fingerprint(arch, variant, dtype)
    marker = set_dir / MARKER
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        return set_dir
    if set_dir.exists():
        shutil.rmtree(set_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    quiet_libraries()

    def part(name: str):
        """Initialised on `device` directly in `dtype` (fast, half the memory), then kept on the CPU for saving."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = build_component(arch, name).to(dtype).eval()
        finally:
            torch.set_default_dtype(previous)
        return model.to("cpu")

    unet = part("unet")
    common = dict(
        vae=part("vae"),
        text_encoder=part("text_encoder"),
        tokenizer=tiny._tokenizer("<|endoftext|>"),
        unet=unet,
        scheduler=_scheduler(arch),
        image_encoder=None,
        feature_extractor=None,
    )
    if arch == "sdxl":
        pipe = StableDiffusionXLInpaintPipeline(
            **common,
            text_encoder_2=part("text_encoder_2"),
            tokenizer_2=tiny._tokenizer("!"),
            requires_aesthetics_score=False,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionInpaintPipeline(**common, safety_checker=None, requires_safety_checker=False)
    base = model_set.base
    pipe.save_pretrained(base, safe_serialization=True)
    tiny._write_tokenizer(base / "tokenizer", pad_token="<|endoftext|>")
    if arch == "sdxl":
        tiny._write_tokenizer(base / "tokenizer_2", pad_token="!")
    del pipe, common
    _write_ip_adapter(model_set, unet, dtype, device)
    del unet
    encoder = part("image_encoder")
    encoder.save_pretrained(model_set.image_encoder)
    del encoder
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    marker.write_text(fingerprint + "\n")
    return set_dir


def _scheduler(arch: str):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    scheduler_class = EulerDiscreteScheduler if arch == "sdxl" else DDIMScheduler
    return scheduler_class.from_config(config(f"{arch}/scheduler.json"))


def _write_ip_adapter(model_set: ModelSet, unet, dtype: torch.dtype, device: str) -> None:
    """The h94/IP-Adapter checkpoint for `variant`, in the original key format, at full size."""
    from safetensors.torch import save_file

    from pipelines.models import tiny

    arch, variant = model_set.arch, model_set.variant
    shapes = json.loads((CONFIGS / "ip_adapter" / "adapters.json").read_text())[arch][variant]
    with torch.device(device):
        if variant == "plus":
            projection = tiny._Resampler(
                shapes["resampler_dim"],
                shapes["embedding_dim"],
                shapes["output_dim"],
                depth=shapes["depth"],
                ff_mult=shapes["ff_mult"],
            )
        else:
            projection = tiny._ImageProjModel(
                shapes["cross_attention_dim"], shapes["clip_embeddings_dim"], shapes["tokens"]
            )
        layers = tiny._ip_attn_modules(unet)
    checkpoint = tiny._ip_checkpoint(projection.to(dtype), layers.to(dtype))
    path = model_set.adapter_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.cpu() for key, value in checkpoint.items()}, path, metadata={"format": "pt"})
