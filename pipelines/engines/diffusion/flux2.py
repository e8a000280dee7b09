"""The FLUX.2 [klein] engine: one swap, told top to bottom.

1. Place the object (or the tiled pattern) as pixels: the same placement stage as the other engines. The grown
   mask is the only region that may change.
2. Take a crop around the grown mask with some context at the model's native area (1024^2 in one of nine aspect
   buckets, all within the pipeline's 1 MP, sides multiples of 16: geometry.py); the pipeline's mask is the
   grown mask widened by half a cell and then to whole 16-pixel latent cells (FLUX.2 packs 2x2 latents of the
   8x VAE), so no cell is half repainted; the paste mask stays the grown mask.
3. Steer the model: `image_reference` is the object's cut-out on white (for a pattern, its grid of tiles as it
   covers the box), padded to whole cells; the model reads it in attention next to the scene. It is capped at
   REFERENCE_AREA pixels and at the crop's own area: its tokens join the scene's in every attention, so a
   reference larger than the scene costs more than the scene itself and shows the model no detail the crop can
   hold.
4. Denoise the placed crop from the start SNR subject_strength sets, the same as on SD (schedule.py): explicit
   `sigmas` whose first, after the pipeline's resolution shift, is that level, spaced below it as the model
   was trained (uniform in unshifted time, then shifted). The base model runs exactly `steps` steps with
   classifier-free guidance at guidance_scale against the negative prompt. The step-distilled model runs
   DISTILLED_STEPS steps whatever `steps` says (its card recommends 4; more steps do not improve a
   step-distilled model) and no guidance: it gets guidance_scale 1 (it was distilled without guidance and
   ignores any other value); progress reports those steps. The step cache (TaylorSeer) runs on the base
   model only: on the distilled model's 4 steps the one step it would predict is the last and largest.
5. fashion_strength: the object's own fine detail and colour put back over its coverage, where the model's
   output still lines up with the placed object (object_look.py).
6. Match the colour in the repainted ring, paste inside the grown mask, feathered: every pixel outside is the
   input's own (stitch.py).

An erase (mode "erase") runs the same story with nothing placed and no reference: the crop is the scene with
the grown mask filled (pipelines/placement/erase.py), the prompt the job's or a neutral one (erase.py).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import numpy as np
import torch
from diffusers import Flux2KleinInpaintPipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein_inpaint import compute_empirical_mu
from PIL import Image

from pipelines.engines.diffusion import fp8
from pipelines.engines.diffusion.conditioning import reference_key
from pipelines.engines.diffusion.device_ops import pixels
from pipelines.engines.diffusion.embedding_cache import EmbeddingCache
from pipelines.engines.diffusion.erase import prompts
from pipelines.engines.diffusion.fast_path import compile_blocks, with_eager_fallback
from pipelines.engines.diffusion.geometry import dilate, whole_cells
from pipelines.engines.diffusion.lora_adapters import LoraAdapters
from pipelines.engines.diffusion.object_look import keep_own_look
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.engines.diffusion.runtime import step_callback
from pipelines.engines.diffusion.schedule import flow_sigmas, start_snr
from pipelines.engines.diffusion.staged import StagedEngine
from pipelines.engines.diffusion.step_cache import enable_transformer_cache
from pipelines.engines.diffusion.stitch import Prepared, crop_around, stitch
from pipelines.errors import WeightsError
from pipelines.interface import ProgressFn
from pipelines.job import ERASE, SwapJob
from pipelines.models.model_sets import ModelSet
from pipelines.placement import Placement, grid_reference
from pipelines.placement.cache import ImageCache
from pipelines.torch_runtime import first_line, quiet_libraries

log = logging.getLogger("segswap.diffusion")

DISTILLED_STEPS = 4
PIPELINE_MAX_AREA = 1024 * 1024  # Flux2KleinInpaintPipeline shrinks a larger image: crops must stay within it
REFERENCE_AREA = 768 * 768  # reference tokens cost attention like scene tokens: 2304 of them at most
BACKGROUND = (255, 255, 255)


class Flux2Engine(StagedEngine):
    """FLUX.2 [klein] inpainting with the object as a reference image. Load once, call `swap` many times (or
    the three stages of staged.py, `generate` on one thread)."""

    def __init__(self, model_set: ModelSet, options: DiffusionOptions | None = None):
        self._configure(model_set, options)
        self.pipe = load_flux2_pipeline(model_set, self.device, self.dtype, self.options)
        self.name = f"diffusion/{model_set.name}"
        self.distilled = bool(self.pipe.config.is_distilled)
        self.cell = self.pipe.vae_scale_factor * 2
        # The pipeline's own default side (1024), or the VAE's configured sample size where that is smaller.
        pipeline_side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        self.native_side = min(pipeline_side, self.pipe.vae.config.sample_size)
        self.embeddings = EmbeddingCache(self.options.embed_cache_size)
        self.objects = ImageCache(self.options.object_cache_bytes)
        self._schedule_probe = copy.deepcopy(self.pipe.scheduler)  # prepare's own: the pipeline's moves as it runs
        self.last_timings: dict[str, float] = {}
        if self.options.step_cache and self.distilled:
            log.warning("step cache: off on %s, whose 4 steps leave it only the last to predict", model_set.name)
            self.options = dataclasses.replace(self.options, step_cache=False)
        if self.options.fp8:
            fp8.quantize_linears(self.pipe.transformer)
        if self.options.step_cache:
            enable_transformer_cache(self.pipe.transformer, self.options.step_cache_interval)
        elif self.options.compile:  # TaylorSeer's hooks break the blocks' graphs: one or the other
            compile_blocks(self.pipe.transformer)
        self.loras = LoraAdapters(self.pipe, model_set.folder, self.name, compiled=self.compiled)
        if self.options.few_step and not self.distilled:
            log.warning(
                "few-step mode: %s has no few-step weights and runs every step; flux2-klein is the "
                "step-distilled model (4 steps)",
                model_set.name,
            )

    def steps_for(self, job: SwapJob) -> int:
        """The denoising steps that run: the job's on the base model, DISTILLED_STEPS on the distilled one."""
        return DISTILLED_STEPS if self.distilled else job.steps

    def generate(self, job: SwapJob, prepared: Prepared, progress: ProgressFn | None = None) -> torch.Tensor:
        """The model on the prepared crop, with the prompt's embeddings; its output (3, H, W in 0..1) stays on
        the device."""
        self.loras.use(job.lora, job.lora_scale)
        started = time.perf_counter()
        prompts = self._prompt_embeddings(job)
        self.embeds_s = time.perf_counter() - started
        arguments = dict(
            **prompts,
            **prepared.pipeline_arguments(),
            image_reference=prepared.reference,
            output_type="pt",  # the finish runs on the device too
            callback_on_step_end=step_callback(progress, prepared.steps),
        )
        return self._generate(arguments, job.seed)

    def prepare(self, job: SwapJob) -> Prepared:
        """Placement, crop, reference and sigmas: everything up to the model."""
        self.loras.check(job.lora)
        placement, digest = self.objects.place(job)
        crop = crop_around(placement, self.native_side, self.cell, self._repainted, PIPELINE_MAX_AREA)
        steps = self.steps_for(job)
        schedule = dict(
            strength=1.0,  # the start is the first of `sigmas`: nothing to cut
            sigmas=self.sigmas(crop.size, steps, job.subject_strength),
            num_inference_steps=steps,
        )
        area = crop.size[0] * crop.size[1]
        repeats = (job.horizontal_repeat, job.vertical_repeat)
        key = ("flux2-reference", area, *reference_key(placement, digest, repeats))
        reference = None
        if placement.mode != ERASE:
            reference = self.objects.get(key, lambda: reference_image(placement, self.cell, area, repeats))
        return Prepared(placement, crop, reference, steps, self.guidance_for(job), schedule, reference_key=key)

    def finish(self, job: SwapJob, prepared: Prepared, generated) -> Image.Image:
        """The object's own look put back where still registered, then colour-matched and pasted back, on the
        model's device (the output tensor, or an image)."""
        crop, placement = prepared.crop, prepared.placement
        device = self.pipe._execution_device
        coverage = crop.weights(placement.coverage) * crop.grown
        amount = job.fashion_strength * job.subject_strength
        drawn = keep_own_look(pixels(generated, device), pixels(crop.init, device), coverage, amount)
        return stitch(job.main_image.convert("RGB"), drawn, crop, placement, job.growmask)

    def guidance_for(self, job: SwapJob) -> float:
        """The job's guidance scale on the base model; none (1) on the distilled one."""
        return 1.0 if self.distilled else job.guidance_scale

    def sigmas(self, size: tuple[int, int], steps: int, subject_strength: float) -> list[float]:
        """The pipeline's `sigmas` for a crop of `size`: `steps` of them from subject_strength's start SNR, with
        the resolution shift (mu) the pipeline computes for that crop and step count."""
        tokens = (size[1] // self.cell) * (size[0] // self.cell)
        mu = compute_empirical_mu(image_seq_len=tokens, num_steps=steps)
        return flow_sigmas(self._schedule_probe, steps, start_snr(subject_strength), mu)

    def _generate(self, arguments: dict, seed: int) -> torch.Tensor:
        def generate() -> torch.Tensor:
            if self.options.step_cache:  # the pipeline resets it at the end; a run cut short never got there
                self.pipe.transformer._reset_stateful_cache()
            return self.pipe(**arguments, generator=torch.Generator("cpu").manual_seed(seed)).images[0]

        if not self.compiled:
            return generate()
        image, still_compiled = with_eager_fallback(generate, self.pipe.transformer)
        if not still_compiled:
            self.options = dataclasses.replace(self.options, compile=False)
        return image

    @property
    def compiled(self) -> bool:
        """Whether the transformer's blocks run compiled (compile on, and no step cache)."""
        return bool(self.options.compile) and not self.options.step_cache

    def _repainted(self, grown: np.ndarray) -> np.ndarray:
        return whole_cells(dilate(grown, self.cell // 2), self.cell)

    def _prompt_embeddings(self, job: SwapJob) -> dict[str, torch.Tensor]:
        """prompt_embeds (and, for guidance on the base model, the negative prompt's): the tensors the pipeline
        computes itself, from the LRU when seen before. The pipeline alone would guide against "" always."""
        prompt, negative_prompt = prompts(job)
        arguments = {"prompt_embeds": self._encode(prompt)}
        if self.guidance_for(job) > 1:
            arguments["negative_prompt_embeds"] = self._encode(negative_prompt)
        return arguments

    def _encode(self, prompt: str) -> torch.Tensor:
        def encode() -> torch.Tensor:
            embeds, _ = self.pipe.encode_prompt(prompt=prompt, device=self.pipe._execution_device)
            return embeds

        if not self.embeddings.enabled:
            with torch.no_grad():
                return encode()
        return self.embeddings.get(("flux2-prompt", prompt), encode)


def reference_image(placement: Placement, cell: int, scene_area: int, repeats: tuple[int, int]) -> Image.Image:
    """The object as the model reads it: the cut-out on white (or the pattern's grid of `repeats` tiles, as it
    covers the box), at most REFERENCE_AREA pixels and at most `scene_area` (the crop's), padded (never cropped)
    to whole latent cells."""
    reference = placement.reference
    if placement.mode == "pattern":
        reference = grid_reference(reference, placement.box, *repeats)
    rgba = reference.convert("RGBA")
    area = min(REFERENCE_AREA, scene_area)
    scale = min(1.0, (area / (rgba.width * rgba.height)) ** 0.5)
    if scale < 1.0:
        size = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
        rgba = rgba.resize(size, Image.Resampling.LANCZOS)
    width, height = (-(-side // cell) * cell for side in rgba.size)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(rgba, ((width - rgba.width) // 2, (height - rgba.height) // 2), rgba.getchannel("A"))
    return canvas


def load_flux2_pipeline(model_set: ModelSet, device: torch.device, dtype: torch.dtype, options: DiffusionOptions):
    """The diffusers FLUX.2 [klein] inpainting pipeline, from local files only; any failure is a WeightsError."""
    missing = model_set.missing()
    if missing:
        raise WeightsError(f"model set {model_set.folder} is incomplete, missing {', '.join(missing[:4])}")
    quiet_libraries()
    try:
        pipe = Flux2KleinInpaintPipeline.from_pretrained(
            model_set.base, dtype=dtype, local_files_only=True, use_safetensors=True
        )
    except Exception as exc:  # diffusers/transformers/safetensors raise many types for bad files
        raise WeightsError(f"cannot load model set {model_set.folder}: {first_line(exc)}") from exc
    pipe.set_progress_bar_config(disable=True)
    if options.cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    elif device.type != "cpu":
        pipe.to(device)
    return pipe
