"""The diffusion engine: one swap, told top to bottom.

1. Place the object (or the tiled pattern) as pixels: the placement stage the composite engine is made of
   (pipelines/placement). The grown mask is the only region that may change.
2. Take a crop around the grown mask with some context, widened to the nearest of nine aspect buckets and
   processed at that bucket's size at the model's native area (geometry.py: a compiled model sees few shapes);
   the pipeline's mask is the grown mask widened by two latent cells, so that the model repaints whole latent
   cells along the edge; the paste mask stays the grown mask.
3. Steer the model: IP-Adapter sees the cut-out (or the pattern's grid of tiles) padded to a square, confined to
   the repainted region by token masks made once per swap on each layer's real grid (ip_masks.py); per-layer
   scales from InstantStyle and diffusers' guide: the style block follows fashion_strength, the layout block
   and the rest subject_strength (conditioning.py).
4. Denoise the placed crop from the start SNR subject_strength sets (schedule.py: one rule for every
   scheduler and step count), exactly `steps` steps, seeded; below 20 steps with DPM++ 2M on Karras-spaced
   timesteps, in few-step mode with LCM on its distillation grid.
5. Match the result's colour to the original in the ring the model repainted outside the grown mask, scale it
   back and paste it inside the grown mask with a feathered edge: every pixel outside is the input's own.

An erase (mode "erase") runs the same story with nothing placed: the crop is the scene with the grown mask
filled (pipelines/placement/erase.py), every IP-Adapter scale is 0 (the reference, an empty square, weighs
nothing), and the prompt is the job's or a neutral one (erase.py).

Fewer model evaluations (options.py, off by default): few-step mode fuses the set's LCM-LoRA into the UNet at
load and runs 4-8 steps with the LCM scheduler and no guidance (pipelines/models/few_step.py; a request's own
LoRA, lora_adapters.py, then applies on top of the fused weights); the step cache
reuses the UNet's deep features between full steps (step_cache.py).

The fast path (options.py, each piece a setting and measured on and off by `segswap bench --ablate`): SDPA
attention processors, fused q/k/v in self-attention, channels-last UNet/VAE, regional `torch.compile` of the
UNet's transformer blocks, and an LRU of IP-Adapter image embeddings and prompt embeddings handed to the
pipeline as `ip_adapter_image_embeds` / `prompt_embeds` (the tensors the pipeline would compute itself, so a
cached swap gives the same bytes as an uncached one).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import LCMScheduler, StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
from PIL import Image

from pipelines.engines.diffusion.conditioning import reference_image, reference_key, set_ip_adapter_strengths
from pipelines.engines.diffusion.device_ops import pixels
from pipelines.engines.diffusion.embedding_cache import EmbeddingCache
from pipelines.engines.diffusion.erase import prompts
from pipelines.engines.diffusion.fast_path import apply_fast_path, unfuse_self_attention, with_eager_fallback
from pipelines.engines.diffusion.geometry import dilate
from pipelines.engines.diffusion.ip_masks import token_grids, token_masks
from pipelines.engines.diffusion.lora_adapters import LoraAdapters
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.engines.diffusion.preview import latent_preview
from pipelines.engines.diffusion.runtime import step_callback
from pipelines.engines.diffusion.schedule import (
    LOW_STEPS,
    KarrasPlanner,
    LcmPlanner,
    SdPlanner,
    StartPlan,
    low_step_scheduler,
    start_snr,
)
from pipelines.engines.diffusion.staged import StagedEngine
from pipelines.engines.diffusion.step_cache import UNetStepCache
from pipelines.engines.diffusion.stitch import Prepared, crop_around, stitch
from pipelines.errors import WeightsError
from pipelines.interface import ProgressFn
from pipelines.job import ERASE, SwapJob
from pipelines.models.few_step import few_steps, lora_file
from pipelines.models.loras import lora_names
from pipelines.models.model_sets import ModelSet
from pipelines.placement.cache import ImageCache
from pipelines.torch_runtime import first_line, quiet_libraries

LATENT_MARGIN = 16  # processing pixels the pipeline's mask reaches past the grown mask: two latent cells


class DiffusionEngine(StagedEngine):
    """Inpainting + IP-Adapter on one model set. Load once, call `swap` many times (one thread; or the three
    stages of staged.py, `generate` on one thread)."""

    def __init__(self, model_set: ModelSet, options: DiffusionOptions | None = None):
        self._configure(model_set, options)
        self.pipe = load_pipeline(model_set, self.device, self.dtype, self.options)
        self.name = f"diffusion/{model_set.name}"
        self.native_side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.cell = self.pipe.vae_scale_factor  # one latent: crops are whole latents
        if self.options.few_step:
            self.pipe.scheduler = LCMScheduler.from_config(self.pipe.scheduler.config)
            self.planner, self.low_step_planner = LcmPlanner(self.pipe.scheduler), None
        else:
            self.planner = SdPlanner(self.pipe.scheduler)
            self.low_step_planner = KarrasPlanner(low_step_scheduler(self.pipe.scheduler))
        self.step_cache = (
            UNetStepCache(self.pipe.unet, self.options.step_cache_interval) if self.options.step_cache else None
        )
        self.embeddings = EmbeddingCache(self.options.embed_cache_size)
        self.objects = ImageCache(self.options.object_cache_bytes)
        self.loras = LoraAdapters(
            self.pipe,
            model_set.folder,
            self.name,
            compiled=bool(self.options.compile),
            before_load=lambda: unfuse_self_attention(self.pipe.unet),
        )
        self.last_timings: dict[str, float] = {}

    def steps_for(self, job: SwapJob) -> int:
        """The denoising steps that run: exactly the job's, or few-step mode's count for them."""
        return few_steps(job.steps) if self.options.few_step else job.steps

    def guidance_for(self, job: SwapJob) -> float:
        """The guidance scale that runs: the job's, or none (1) in few-step mode."""
        return 1.0 if self.options.few_step else job.guidance_scale

    def generate(self, job: SwapJob, prepared: Prepared, progress: ProgressFn | None = None) -> torch.Tensor:
        """The model on the prepared crop (IP-Adapter scales and masks, the planned scheduler, embeddings); its
        output (3, H, W in 0..1) stays on the device."""
        self.loras.use(job.lora, job.lora_scale)
        strengths = (0.0, 0.0) if job.mode == ERASE else (job.subject_strength, job.fashion_strength)
        set_ip_adapter_strengths(self.pipe.unet, self.model_set.arch, *strengths)
        self.pipe.scheduler = prepared.scheduler
        self._set_vae_tiling(prepared.crop.size)
        ip_masks = self._ip_masks(prepared.crop.repainted)
        started = time.perf_counter()
        conditioning = self._conditioning(job, prepared, guided=prepared.guidance > 1)
        self.embeds_s = time.perf_counter() - started
        arguments = dict(
            **conditioning,
            **prepared.pipeline_arguments(),
            cross_attention_kwargs={"ip_adapter_masks": ip_masks},
            output_type="pt",  # the finish runs on the device too
            callback_on_step_end=step_callback(
                progress, prepared.steps, lambda latents: latent_preview(latents, self.model_set.arch)
            ),
        )
        return self._generate(arguments, job.seed)

    def prepare(self, job: SwapJob) -> Prepared:
        """Placement, crop, reference and start plan: everything up to the model."""
        self.loras.check(job.lora)
        placement, digest = self.objects.place(job)
        crop = crop_around(placement, self.native_side, self.cell, lambda grown: dilate(grown, LATENT_MARGIN))
        steps, guidance = self.steps_for(job), self.guidance_for(job)
        plan = self.start_plan(steps, job.subject_strength)
        schedule = dict(
            width=crop.size[0],
            height=crop.size[1],
            strength=plan.strength,
            num_inference_steps=plan.length,
            timesteps=list(plan.timesteps) if plan.timesteps else None,
        )
        repeats = (job.horizontal_repeat, job.vertical_repeat)
        key = ("ip-reference", *reference_key(placement, digest, repeats))
        reference = self.objects.get(key, lambda: reference_image(placement, *repeats))
        return Prepared(placement, crop, reference, steps, guidance, schedule, plan.scheduler, key)

    def finish(self, job: SwapJob, prepared: Prepared, generated) -> Image.Image:
        """The model's crop (its output tensor, or an image), colour-matched and pasted back inside the grown
        mask, on the model's device."""
        drawn = pixels(generated, self.pipe._execution_device)
        return stitch(job.main_image.convert("RGB"), drawn, prepared.crop, prepared.placement, job.growmask)

    def _generate(self, arguments: dict, seed: int) -> torch.Tensor:
        def generate() -> torch.Tensor:
            if self.step_cache is not None:
                self.step_cache.reset()
            generator = torch.Generator("cpu").manual_seed(seed)
            return self.pipe(**arguments, generator=generator).images[0]

        if not self.options.compile:
            return generate()
        image, compiled = with_eager_fallback(generate, self.pipe.unet)
        if not compiled:
            self.options = dataclasses.replace(self.options, compile=False)
        return image

    def start_plan(self, steps: int, subject_strength: float) -> StartPlan:
        """The scheduler, schedule length and strength that run `steps` steps from subject_strength's start SNR."""
        low = self.low_step_planner is not None and steps < LOW_STEPS
        return (self.low_step_planner if low else self.planner).plan(steps, start_snr(subject_strength))

    def _ip_masks(self, repainted: np.ndarray) -> tuple:
        """The repainted region as a token mask per UNet level, on the model's device, once for the swap."""
        unet = self.pipe.unet
        latent = (repainted.shape[0] // self.cell, repainted.shape[1] // self.cell)
        grids = token_grids(latent, len(unet.down_blocks), unet.config.downsample_padding)
        return token_masks(repainted, self.cell, grids, self.pipe._execution_device, self.dtype)

    def _conditioning(self, job: SwapJob, prepared: Prepared, guided: bool) -> dict:
        """The pipeline's prompt and IP-Adapter arguments: raw (no cache) or embeddings from the LRU.

        Embeddings are always computed as for classifier-free guidance ([negative, positive]); a job
        without guidance gets the positive half, exactly what the pipeline would compute itself.
        """
        reference = prepared.reference
        prompt, negative_prompt = prompts(job)
        if not self.embeddings.enabled:
            return {"prompt": prompt, "negative_prompt": negative_prompt or None, "ip_adapter_image": reference}
        guided = guided and self.pipe.unet.config.time_cond_proj_dim is None

        def encode_image() -> list[torch.Tensor]:
            return self.pipe.prepare_ip_adapter_image_embeds(reference, None, self.pipe._execution_device, 1, True)

        image_key = ("image", self.model_set.arch, self.model_set.variant, *prepared.reference_key)
        image_embeds = self.embeddings.get(image_key, encode_image)
        prompt_key = ("prompt", prompt, negative_prompt, *self.loras.text_encoder_key(job.lora, job.lora_scale))
        arguments = dict(self.embeddings.get(prompt_key, lambda: self._encode_prompt(prompt, negative_prompt)))
        arguments["ip_adapter_image_embeds"] = [e if guided else e.chunk(2)[1] for e in image_embeds]
        return arguments

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
    else:  # diffusers' SDXL pipelines watermark whenever invisible-watermark is installed; ours is a setting
        components.update(add_watermarker=False)
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
        if options.few_step:
            fuse_few_step_lora(pipe, lora_file(model_set.folder, model_set.arch))
    except WeightsError:
        raise
    except Exception as exc:  # diffusers/transformers/safetensors raise many types for bad files
        raise WeightsError(f"cannot load model set {model_set.folder}: {first_line(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    upcast = options.vae_upcast if options.vae_upcast is not None else dtype == torch.float16
    if not upcast and pipe.vae.config.get("force_upcast", False):
        pipe.vae.register_to_config(force_upcast=False)
    offload = options.cpu_offload and device.type == "cuda"
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    elif device.type != "cpu":
        pipe.to(device)
    if lora_names(model_set.folder):  # a LoRA on to_q/to_k/to_v would be skipped by the fused q/k/v matmul
        options = dataclasses.replace(options, fuse_qkv=False)
    apply_fast_path(pipe, options, offload=offload)
    return pipe


def fuse_few_step_lora(pipe, path: Path) -> None:
    """The LCM-LoRA fused into the UNet's weights and its adapter dropped: the UNet stays a plain UNet, so the
    fast path (SDPA processors, fused q/k/v, compile) applies to it unchanged, at no per-step LoRA cost.
    After IP-Adapter, as diffusers' IP-Adapter guide loads them."""
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="few_step")
    pipe.fuse_lora(adapter_names=["few_step"])
    pipe.unload_lora_weights()


def only_fp16_variant(base: Path) -> bool:
    unet = base / "unet"
    return any(unet.glob("*.fp16.safetensors")) and not (unet / "diffusion_pytorch_model.safetensors").exists()
