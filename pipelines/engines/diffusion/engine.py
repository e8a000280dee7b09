"""The diffusion engine: one swap, told top to bottom.

1. Grow the mask (disk dilation) and take a box around it with some context.
2. Scale that crop to the model's native resolution (aspect kept, sides multiple of 8).
3. Tile the object image; it conditions the UNet through IP-Adapter. The style block
   gets `fashion_strength` as its IP-Adapter scale, every other IP-Adapter layer gets
   `subject_strength` (InstantStyle).
4. Inpaint the crop with a diffusers inpainting pipeline, seeded.
5. Scale the result back and paste it inside the grown mask with a feathered edge:
   every pixel outside the grown mask is the input's own.

The fast path (pipelines/engines/diffusion/options.py, each piece a setting and measured on and off by `segswap bench
--ablate`): SDPA attention processors, fused q/k/v in self-attention, channels-last UNet/VAE, regional
`torch.compile` of the UNet's transformer blocks, and an LRU of IP-Adapter image embeddings and prompt
embeddings handed to the pipeline as `ip_adapter_image_embeds` / `prompt_embeds` (same tensors the
pipeline would compute itself, so a cached swap gives the same bytes as an uncached one).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from pipelines.engines.diffusion.embedding_cache import EmbeddingCache, image_digest
from pipelines.engines.diffusion.fast_path import apply_fast_path, is_compile_error, uncompile_unet_blocks
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.errors import WeightsError
from pipelines.imageops import Box, feathered_paste, grow_mask, mask_box, normalize_mask, tile_object
from pipelines.interface import ProgressFn
from pipelines.job import SwapJob
from pipelines.models.model_sets import ModelSet

# InstantStyle's style block: the second attention of the first up block that has
# cross-attention. SDXL: named by the InstantStyle paper. SD1.5: its first up block has
# no attention, so the equivalent (lowest-resolution cross-attention up block, second
# transformer) is up_blocks.1.attentions.1, the block InstantStyle's SD1.5 examples use.
STYLE_BLOCKS = {"sdxl": "up_blocks.0.attentions.1", "sd15": "up_blocks.1.attentions.1"}
CONTEXT_SHARE = 0.25  # context kept around the grown mask, as a share of its box's longer side
MIN_CONTEXT = 16
MAX_ASPECT = 2.0  # boxes more elongated than this take more context on their short side
OBJECT_MAX_SIDE = 1024  # the image encoder sees 224 px anyway; this bounds tiling cost
OBJECT_BACKGROUND = (255, 255, 255)

log = logging.getLogger("segswap.diffusion")


class DiffusionEngine:
    """Inpainting + IP-Adapter on one model set. Load once, call `swap` many times (one thread)."""

    def __init__(self, model_set: ModelSet, options: DiffusionOptions | None = None):
        options = options or DiffusionOptions()
        self.model_set = model_set
        self.device, self.dtype = pick_device(options.device, options.dtype)
        self.options = options.resolved(self.device.type)
        self.pipe = load_pipeline(model_set, self.device, self.dtype, self.options)
        self.name = f"diffusion/{model_set.arch}"
        self.native_side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.style_block = STYLE_BLOCKS[model_set.arch]
        self.embeddings = EmbeddingCache(self.options.embed_cache_size)
        # Seconds of the last swap by stage: mask_ops_s (mask, crop, tiling, paste: image work),
        # embeds_s (prompt and image embeddings, cached or not), model_s (the diffusers call).
        self.last_timings: dict[str, float] = {}

    def swap(self, job: SwapJob, progress: ProgressFn | None = None) -> Image.Image:
        start = time.perf_counter()
        main = job.main_image.convert("RGB")
        grown = grow_mask(normalize_mask(job.mask_image, main.size), job.growmask)
        box = context_box(grown, main.size)
        size = processing_size(box, self.native_side)

        crop = main.crop(box).resize(size, Image.Resampling.LANCZOS)
        crop_mask = Image.fromarray(grown[box[1] : box[3], box[0] : box[2]]).resize(size, Image.Resampling.NEAREST)
        set_ip_adapter_strengths(self.pipe.unet, self.style_block, job.subject_strength, job.fashion_strength)
        self._set_vae_tiling(size)
        prepared = time.perf_counter()
        conditioning, tiling_s = self._conditioning(job)
        embedded = time.perf_counter()

        def generate() -> Image.Image:
            return self.pipe(
                **conditioning,
                image=crop,
                mask_image=crop_mask,
                width=size[0],
                height=size[1],
                num_inference_steps=job.steps,
                strength=1.0,  # SDXL's default 0.9999 would run one step fewer than asked
                guidance_scale=job.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(job.seed),
                callback_on_step_end=_step_callback(progress, job.steps),
            ).images[0]

        try:
            generated = generate()
        except Exception as exc:
            if not (self.options.compile and is_compile_error(exc)):
                raise
            # Compilation is an optimisation: a compiler failure on some machine must not take the engine down.
            log.warning("torch.compile failed (%s); the UNet runs eagerly from now on", _first_line(exc))
            uncompile_unet_blocks(self.pipe.unet)
            self.options = dataclasses.replace(self.options, compile=False)
            generated = generate()
        generated_at = time.perf_counter()

        patch = generated.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
        result = feathered_paste(main, patch, box, grown, feather=max(1, job.growmask))
        end = time.perf_counter()
        self.last_timings = {
            "mask_ops_s": (prepared - start) + tiling_s + (end - generated_at),
            "embeds_s": (embedded - prepared) - tiling_s,
            "model_s": generated_at - embedded,
        }
        return result

    def _conditioning(self, job: SwapJob) -> tuple[dict, float]:
        """The pipeline's prompt and IP-Adapter arguments: raw (no cache) or embeddings from the LRU.

        Also returns the seconds spent tiling the object image (image work, not model work).

        Embeddings are always computed as for classifier-free guidance ([negative, positive]); a job
        without guidance gets the positive half, exactly what the pipeline would compute itself.
        """
        if not self.embeddings.enabled:
            tiling_start = time.perf_counter()
            image = conditioning_image(job.object_image, job.horizontal_repeat, job.vertical_repeat)
            arguments = {
                "prompt": job.prompt,
                "negative_prompt": job.negative_prompt or None,
                "ip_adapter_image": image,
            }
            return arguments, time.perf_counter() - tiling_start
        guided = job.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None
        tiling_s = 0.0

        def encode_image() -> list[torch.Tensor]:
            nonlocal tiling_s
            tiling_start = time.perf_counter()
            image = conditioning_image(job.object_image, job.horizontal_repeat, job.vertical_repeat)
            tiling_s = time.perf_counter() - tiling_start
            return self.pipe.prepare_ip_adapter_image_embeds(image, None, self.pipe._execution_device, 1, True)

        image_key = (
            "image",
            self.model_set.arch,
            self.model_set.variant,
            image_digest(job.object_image),
            job.horizontal_repeat,
            job.vertical_repeat,
        )
        image_embeds = self.embeddings.get(image_key, encode_image)
        prompt_key = ("prompt", job.prompt, job.negative_prompt)
        prompt = self.embeddings.get(prompt_key, lambda: self._encode_prompt(job.prompt, job.negative_prompt))
        arguments = dict(prompt)
        arguments["ip_adapter_image_embeds"] = [e if guided else e.chunk(2)[1] for e in image_embeds]
        return arguments, tiling_s

    @torch.no_grad()
    def _encode_prompt(self, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
        """The prompt embeddings the pipeline computes from (prompt, negative_prompt) under guidance."""
        device = self.pipe._execution_device
        if self.model_set.arch == "sdxl":
            embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
                prompt=prompt,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt=negative_prompt or None,
            )
            return {
                "prompt_embeds": embeds,
                "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": negative_pooled,
            }
        embeds, negative = self.pipe.encode_prompt(prompt, device, 1, True, negative_prompt or None)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}

    def _set_vae_tiling(self, size: tuple[int, int]) -> None:
        if self.options.vae_tiling or size[0] * size[1] > self.options.vae_tiling_above_pixels:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 (fp16 where bf16 is missing), Apple MPS in fp16, else CPU in fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    chosen = torch.device(device)
    if dtype == "auto":
        if chosen.type == "cuda":
            return chosen, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return chosen, torch.float16 if chosen.type == "mps" else torch.float32
    dtypes = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in dtypes:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(dtypes)}")
    return chosen, dtypes[dtype]


def load_pipeline(model_set: ModelSet, device: torch.device, dtype: torch.dtype, options: DiffusionOptions):
    """The diffusers pipeline with its IP-Adapter, from local files only; any failure is a WeightsError.

    A set with a single-file `base.safetensors` loads its weights from that file and its
    configs from base/.
    """
    from pipelines.models.single_file import load_single_file_pipeline

    missing = model_set.missing()
    if missing:
        raise WeightsError(f"model set {model_set.folder} is incomplete, missing {', '.join(missing[:4])}")
    pipeline_class = StableDiffusionXLInpaintPipeline if model_set.arch == "sdxl" else StableDiffusionInpaintPipeline
    components: dict = {}
    if model_set.arch == "sd15":
        components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    kwargs: dict = {"dtype": dtype, "local_files_only": True, "use_safetensors": True, **components}
    if only_fp16_variant(model_set.base):
        kwargs["variant"] = "fp16"
    quiet_libraries()
    try:
        if model_set.checkpoint is not None:
            pipe = load_single_file_pipeline(pipeline_class, model_set.checkpoint, model_set.base, dtype, **components)
        else:
            pipe = pipeline_class.from_pretrained(model_set.base, **kwargs)
        pipe.load_ip_adapter(**model_set.ip_adapter_kwargs(), local_files_only=True)
    except Exception as exc:  # diffusers/transformers/safetensors raise many types for bad files
        raise WeightsError(f"cannot load model set {model_set.folder}: {_first_line(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    offload = options.cpu_offload and device.type == "cuda"
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    elif device.type != "cpu":
        pipe.to(device)
    apply_fast_path(pipe, options, offload=offload)
    return pipe


def quiet_libraries() -> None:
    """Loading bars and advice meant for notebooks would flood a server's log on every start."""
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def only_fp16_variant(base: Path) -> bool:
    unet = base / "unet"
    return any(unet.glob("*.fp16.safetensors")) and not (unet / "diffusion_pytorch_model.safetensors").exists()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def set_ip_adapter_strengths(unet, style_block: str, subject: float, fashion: float) -> dict[str, float]:
    """Per-layer IP-Adapter scales: `fashion` on the style block, `subject` everywhere else.

    Returns the scale set on each IP-Adapter attention processor, by processor name.
    """
    scales: dict[str, float] = {}
    for name, processor in unet.attn_processors.items():
        if not hasattr(processor, "to_k_ip"):
            continue
        value = fashion if name.startswith(style_block + ".") else subject
        processor.scale = [value] * len(processor.scale)
        scales[name] = value
    return scales


def context_box(grown: np.ndarray, size: tuple[int, int]) -> Box:
    """A box around the grown mask with context, widened on its short side if it is too elongated."""
    left, top, right, bottom = mask_box(grown)
    margin = max(MIN_CONTEXT, round(CONTEXT_SHARE * max(right - left, bottom - top)))
    left, top, right, bottom = left - margin, top - margin, right + margin, bottom + margin
    width, height = right - left, bottom - top
    if width > MAX_ASPECT * height:
        extra = math.ceil(width / MAX_ASPECT - height) // 2 + 1
        top, bottom = top - extra, bottom + extra
    elif height > MAX_ASPECT * width:
        extra = math.ceil(height / MAX_ASPECT - width) // 2 + 1
        left, right = left - extra, right + extra
    return max(0, left), max(0, top), min(size[0], right), min(size[1], bottom)


def processing_size(box: Box, native_side: int) -> tuple[int, int]:
    """Width and height with the area of native_side^2, the box's aspect, sides multiples of 8.

    The long side is capped at twice the native side for boxes that stayed elongated
    against the image border.
    """
    width, height = box[2] - box[0], box[3] - box[1]
    scale = native_side / math.sqrt(width * height)
    scale = min(scale, 2 * native_side / max(width, height))
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)


def conditioning_image(obj: Image.Image, horizontal: int, vertical: int) -> Image.Image:
    """The IP-Adapter image: the object tiled, transparent parts on white."""
    tiled = tile_object(obj.convert("RGBA"), horizontal, vertical, max_side=OBJECT_MAX_SIDE)
    background = Image.new("RGB", tiled.size, OBJECT_BACKGROUND)
    background.paste(tiled, mask=tiled.getchannel("A"))
    return background


def _step_callback(progress: ProgressFn | None, total: int):
    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if progress is not None:
            progress(step + 1, total)
        return callback_kwargs

    return on_step_end
