"""How to run the diffusion engine. Kept apart from diffusion.py so that reading settings needs no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiffusionOptions:
    """Device, dtype and memory savers; "auto" picks for the machine (CUDA bf16/fp16, MPS fp16, CPU fp32)."""

    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    vae_tiling: bool = False
