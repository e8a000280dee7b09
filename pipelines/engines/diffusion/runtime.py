"""What every diffusion engine needs around its pipeline: the device and dtype, quiet libraries, a progress
callback, one-line error text."""

from __future__ import annotations

import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from pipelines.interface import ProgressFn

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 (fp16 where bf16 is missing), Apple MPS in fp16, else CPU in fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    chosen = torch.device(device)
    if dtype == "auto":
        if chosen.type == "cuda":
            return chosen, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return chosen, torch.float16 if chosen.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return chosen, DTYPES[dtype]


def quiet_libraries() -> None:
    """Loading bars and advice meant for notebooks would flood a server's log on every start."""
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def step_callback(progress: ProgressFn | None, total: int, preview=None):
    """A diffusers `callback_on_step_end` that reports (step, total) to `progress`, and, when `progress` takes
    previews and `preview(latents)` is given, offers it a preview of the step (see pipelines.interface)."""
    wants_previews = preview is not None and callable(getattr(progress, "preview", None))

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        if progress is not None:
            progress(step + 1, total)
        if wants_previews:
            latents = callback_kwargs["latents"].detach().clone()
            progress.preview(lambda: preview(latents))
        return callback_kwargs

    return on_step_end
