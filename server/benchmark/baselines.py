"""Plain diffusers, the bench's yardstick: the documented whole-image pipelines (the bare baseline) and the same
pipeline handed ours' work (like for like)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipelines import SwapJob
from pipelines.models.model_sets import ModelSet


class DiffusersBaseline:
    """Plain diffusers, as its documentation shows inpainting with an IP-Adapter: the whole image, no crop."""

    def __init__(self, model_set: ModelSet, device, dtype):
        from diffusers import AutoPipelineForInpainting

        from pipelines.engines.diffusion.engine import only_fp16_variant
        from pipelines.torch_runtime import quiet_libraries

        if model_set.checkpoint is not None:
            raise ValueError(f"{model_set.folder} is a single-file set; the baseline needs a diffusers-format base/")
        quiet_libraries()
        extra: dict = {"variant": "fp16"} if only_fp16_variant(model_set.base) else {}
        if model_set.arch == "sd15":
            extra.update(safety_checker=None, requires_safety_checker=False)
        else:  # the same image work as ours: no watermark, whether invisible-watermark is installed or not
            extra.update(add_watermarker=False)
        pipe = AutoPipelineForInpainting.from_pretrained(
            str(model_set.base), dtype=dtype, local_files_only=True, **extra
        )
        pipe.load_ip_adapter(**model_set.ip_adapter_kwargs(), local_files_only=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.scheduler = pipe, pipe.scheduler

    def __call__(self, job: SwapJob) -> Image.Image:
        import torch

        self.pipe.scheduler = self.scheduler  # the like-for-like row shares this pipeline and sets its own
        self.pipe.set_ip_adapter_scale(1.0)
        width, height = job.main_image.width // 8 * 8, job.main_image.height // 8 * 8
        return self.pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt or None,
            image=job.main_image,
            mask_image=job.mask_image,
            ip_adapter_image=job.object_image.convert("RGB"),
            height=height,
            width=width,
            num_inference_steps=job.steps,
            strength=1.0,  # as ours: every step runs
            guidance_scale=job.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        ).images[0]


class Flux2Baseline:
    """Plain diffusers, as its documentation shows FLUX.2 [klein] inpainting with a reference image: the whole
    image, the object as `image_reference`, no crop."""

    def __init__(self, model_set: ModelSet, device, dtype):
        from diffusers import Flux2KleinInpaintPipeline

        from pipelines.torch_runtime import quiet_libraries

        quiet_libraries()
        pipe = Flux2KleinInpaintPipeline.from_pretrained(str(model_set.base), dtype=dtype, local_files_only=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def __call__(self, job: SwapJob) -> Image.Image:
        import torch

        return self.pipe(
            prompt=job.prompt,
            image=job.main_image,
            mask_image=job.mask_image,
            image_reference=job.object_image.convert("RGB"),
            num_inference_steps=job.steps,
            strength=1.0,  # as ours: every step runs
            guidance_scale=job.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        ).images[0]


class LikeForLike:
    """Plain diffusers on ours' work: the bare baseline's pipeline handed what ours hands its own (the same
    prepare and finish: placement, crop, start, reference; colour match and paste), with raw prompts and
    images instead of cached embeddings, and the IP-Adapter mask in diffusers' own full-size form."""

    def __init__(self, ours, bare):
        self.ours, self.pipe = ours, bare.pipe

    def __call__(self, job: SwapJob) -> Image.Image:
        import torch

        prepared = self.ours.prepare(job)
        arguments = dict(prepared.pipeline_arguments(), prompt=job.prompt)
        if hasattr(self.pipe, "transformer"):  # FLUX.2 [klein]: it guides against "" by itself
            arguments["image_reference"] = prepared.reference
        else:
            self._steer(job, prepared, arguments)
        generated = self.pipe(**arguments, generator=torch.Generator("cpu").manual_seed(job.seed)).images[0]
        return self.ours.finish(job, prepared, generated)

    def _steer(self, job: SwapJob, prepared, arguments: dict) -> None:
        from pipelines.engines.diffusion.conditioning import set_ip_adapter_strengths

        set_ip_adapter_strengths(self.pipe.unet, self.ours.model_set.arch, job.subject_strength, job.fashion_strength)
        self.pipe.scheduler = type(prepared.scheduler).from_config(prepared.scheduler.config)
        arguments.update(negative_prompt=job.negative_prompt or None, ip_adapter_image=prepared.reference)
        masks = diffusers_ip_masks(prepared.crop.repainted, self.pipe._execution_device)
        if masks is not None:
            arguments["cross_attention_kwargs"] = {"ip_adapter_masks": masks}


def diffusers_ip_masks(mask: np.ndarray, device) -> list | None:
    """The repainted region as diffusers' IPAdapterMaskProcessor makes an IP-Adapter mask; None where its
    per-layer downsampling would divide by zero (fewer deepest-layer tokens than the crop's width / height)."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    height, width = mask.shape
    if math.ceil(width / 64) * math.ceil(height / 64) < width / height:
        return None
    picture = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return [IPAdapterMaskProcessor().preprocess([picture], height=height, width=width).to(device)]
