"""Full-size SDXL, SD1.5 and FLUX.2 [klein] model sets with random weights, from server/benchmark/configs/.

Same architectures, parameter counts and FLOPs as the real downloads (the configs are the real ones:
UNet with 9 input channels, VAE, CLIP text encoders, the ViT-H image encoder, IP-Adapter shapes), written
in the layout `pipelines.models.model_sets` loads, so the engine and the plain-diffusers baseline load them
exactly as they load real weights. Nothing is downloaded: the tokenizers are the byte-level ones the
tiny sets use (their ids fit the 49408-entry embedding; the prompt is padded to 77 tokens either way).

Parameter counts (checked by tests/test_bench.py on the meta device):
SDXL inpainting UNet 2,567,478,084; VAE 83,653,863; CLIP-L text 123,060,480; bigG text 694,659,840;
SD1.5 inpainting UNet 859,535,364; ViT-H image encoder 632,076,800; FLUX.2 [klein] 4B transformer
3,875,544,576, its VAE 84,046,115 and Qwen3-4B text encoder 4,022,468,096 (each the bf16 file size in the
shipped manifest, less the safetensors header, over two bytes: the configs are the real ones). The FLUX.2
sets use the tiny sets' byte-level Qwen tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from pipelines.models.few_step import LORA_FILE, LORA_SETS
from pipelines.models.model_sets import SETS, ModelSet

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
    ("flux2", "transformer"): 3_875_544_576,
    ("flux2", "vae"): 84_046_115,
    ("flux2", "text_encoder"): 4_022_468_096,
}
MARKER = ".bench-full-set"
LCM_LORA_RANK = 64  # latent-consistency/lcm-lora-sdxl and -sdv1-5


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

    if arch == "flux2":
        return _flux2_component(part)
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


def _flux2_component(part: str):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if part == "transformer":
        return Flux2Transformer2DModel.from_config(config("flux2/transformer.json"))
    if part == "vae":
        return AutoencoderKLFlux2.from_config(config("flux2/vae.json"))
    if part == "text_encoder":
        return Qwen3ForCausalLM(Qwen3Config(**config("flux2/text_encoder.json")))
    raise ValueError(f"unknown part {part!r}")


def _fingerprint(name: str, variant: str, dtype: torch.dtype) -> str:
    digest = hashlib.sha256(f"{name}:{variant}:{dtype}".encode())
    for path in sorted(CONFIGS.rglob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_full(
    out_dir: Path,
    name: str,
    variant: str = "plus",
    dtype: torch.dtype = torch.bfloat16,
    device: str | None = None,
    seed: int = 0,
) -> Path:
    """Write (or reuse) the full-size set `<out_dir>/<name>` with random weights; returns the set folder.

    `name` is a model set name (sdxl, sd15, flux2-klein, flux2-klein-base). Built on `device` (default: CUDA
    when there is one: initialising billions of parameters on a CPU takes minutes) and saved in `dtype`. A set
    written earlier from the same configs is reused.
    """
    from pipelines.torch_runtime import quiet_libraries

    arch = SETS[name]
    set_dir = Path(out_dir) / name
    if arch in LORA_SETS:
        _ensure_few_step_lora(Path(out_dir) / LORA_SETS[arch], arch, seed)
    fingerprint = _fingerprint(name, variant, dtype)
    marker = set_dir / MARKER
    if marker.is_file() and marker.read_text().strip() == fingerprint:
        return set_dir
    if set_dir.exists():
        shutil.rmtree(set_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    quiet_libraries()

    def part(part_name: str):
        return _built(arch, part_name, dtype, device)

    if arch == "flux2":
        _write_flux2(ModelSet(arch, set_dir), part, distilled=name == "flux2-klein")
    else:
        _write_sd(ModelSet(arch, set_dir, variant), part, dtype, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    marker.write_text(fingerprint + "\n")
    return set_dir


def _ensure_few_step_lora(folder: Path, arch: str, seed: int) -> None:
    """The set's LCM-LoRA at the real files' rank (64), for the few-step ablation; kept once written."""
    from pipelines.models.tiny_lora import write_lora

    if (folder / LORA_FILE).is_file():
        return
    with torch.device("meta"):  # only the UNet's layer names and shapes are needed
        unet = build_component(arch, "unet")
    write_lora(folder, unet, seed, rank=LCM_LORA_RANK)


def _built(arch: str, name: str, dtype: torch.dtype, device: str):
    """One component initialised on `device` directly in `dtype` (fast, half the memory), then moved to the CPU."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_component(arch, name).to(dtype).eval()
    finally:
        torch.set_default_dtype(previous)
    return model.to("cpu")


def _write_flux2(model_set: ModelSet, part, distilled: bool) -> None:
    from diffusers import Flux2KleinPipeline

    from pipelines.models.tiny_flux2 import flow_scheduler, qwen_tokenizer
    from pipelines.models.tiny_parts import byte_chars

    pipe = Flux2KleinPipeline(
        scheduler=flow_scheduler(),
        vae=part("vae"),
        text_encoder=part("text_encoder"),
        tokenizer=qwen_tokenizer(byte_chars()),
        transformer=part("transformer"),
        is_distilled=distilled,
    )
    pipe.save_pretrained(model_set.base, safe_serialization=True)


def _write_sd(model_set: ModelSet, part, dtype: torch.dtype, device: str) -> None:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    from pipelines.models import tiny

    arch = model_set.arch
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
