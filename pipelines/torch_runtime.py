"""What every model in pipelines/ needs around it (the diffusion engines, SAM 2 and OWLv2): the device and dtype,
quiet libraries, one-line error text. Imports torch, so only modules that run a model import this."""

from __future__ import annotations

import importlib.util

import torch
from transformers.utils import logging as transformers_logging

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
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if importlib.util.find_spec("diffusers") is not None:  # the selection models need only transformers
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
