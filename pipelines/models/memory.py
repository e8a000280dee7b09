"""How much memory a model set needs once loaded, and how much a device has free: read before loading anything.

Weights: the parameters the set's files hold (read from the safetensors headers, no tensor loaded), at the
dtype they load in (2 bytes on a GPU, 4 on the CPU, or what `dtype` forces). Each component counts once,
whatever variants of its files lie side by side (model.safetensors next to model.fp16.safetensors).

Activations, at the set's native size: the largest transient of a swap is the VAE decoding the native-size
crop. Every arch's VAE (SD1.5, SDXL, FLUX.2) runs its last block at full resolution with 128 channels, and a
ResNet block there holds about six such maps at once (input, two norms, two convolutions, the residual); the
VAE may decode in float32 (SDXL's upcast), so 4 bytes each. The denoiser's own activations at 1/8 or 1/16 of
the side, the CFG batch of two and the allocator's slack add at most half of that again. So:
native_side² x 128 x 6 x 4 x 1.5 bytes: 4.5 GiB at 1024 (SDXL, FLUX.2 [klein]), 1.1 GiB at 512 (SD1.5).
"""

from __future__ import annotations

import gc
import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from math import prod
from pathlib import Path

from pipelines.models.model_sets import ModelSet

VAE_FULL_RES_CHANNELS = 128
VAE_LIVE_MAPS = 6
ACTIVATION_BYTES = 4
HEADROOM = 1.5
LATENT_SCALE = 8  # pixels per latent cell of the SD VAEs (the UNet's sample_size is in latent cells)
MAX_HEADER_BYTES = 100 * 2**20
VARIANT = re.compile(r"\.(fp16|bf16|fp32)(?=\.(safetensors|bin)$)")


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    activations: int
    native_side: int

    @property
    def total(self) -> int:
        return self.weights + self.activations


def estimate(model_set: ModelSet, dtype_bytes: int) -> MemoryEstimate:
    """What `model_set` needs on its device: its weights at `dtype_bytes` a parameter, its activations."""
    side = native_side(model_set)
    return MemoryEstimate(parameter_count(model_set) * dtype_bytes, activations_at(side), side)


def activations_at(side: int) -> int:
    """The activation estimate at a native side (for tables of sets not installed)."""
    return int(side * side * VAE_FULL_RES_CHANNELS * VAE_LIVE_MAPS * ACTIVATION_BYTES * HEADROOM)


def dtype_bytes(device: str, dtype: str) -> int:
    """Bytes a parameter takes once loaded: `auto` is half precision on a GPU, float32 on the CPU."""
    if dtype == "auto":
        return 4 if device.split(":")[0] == "cpu" else 2
    return 4 if dtype in ("float32", "fp32") else 2


def native_side(model_set: ModelSet) -> int:
    """The side of the square the model works at: the UNet's sample size in pixels (SD), the VAE's (FLUX.2)."""
    if model_set.arch == "flux2":
        return int(_config(model_set.base / "vae" / "config.json").get("sample_size", 1024))
    return int(_config(model_set.base / "unet" / "config.json").get("sample_size", 128)) * LATENT_SCALE


def parameter_count(model_set: ModelSet) -> int:
    """Parameters in the files the set loads; a .bin file (no readable header) counts its bytes over 2."""
    files = [path for path in model_set.base.rglob("*") if path.suffix in (".safetensors", ".bin")]
    if model_set.checkpoint is not None:
        files.append(model_set.checkpoint)
    if model_set.uses_ip_adapter:
        files.append(model_set.adapter_file)
        files += [path for path in model_set.image_encoder.glob("*") if path.suffix in (".safetensors", ".bin")]
    once = {VARIANT.sub("", str(path)): path for path in sorted(files, reverse=True) if path.is_file()}
    return sum(_parameters_in(path) for path in once.values())


def _parameters_in(path: Path) -> int:
    """The parameters a weight file holds, from its safetensors header; else its size over 2 bytes (a file
    whose header cannot be read is the loader's to explain, in its own words)."""
    if path.suffix != ".safetensors":
        return path.stat().st_size // 2
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                return path.stat().st_size // 2
            header = json.loads(handle.read(length))
        return sum(prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    except (struct.error, ValueError, TypeError, KeyError, AttributeError):
        return path.stat().st_size // 2


def _config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def available_bytes(device: str) -> int | None:
    """Free memory on `device` now: the CUDA driver's figure, the system's available memory for the CPU; None
    where it cannot be known (MPS, no /proc/meminfo)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if kind == "cpu":
        try:
            lines = Path("/proc/meminfo").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def held_bytes(device: str) -> int | None:
    """Memory this process holds on `device` now: CUDA's allocated tensors, the process's resident size on the
    CPU (tensors that large are mapped and unmapped whole, so freeing them shows); None elsewhere."""
    kind = device.split(":")[0]
    if kind == "cuda":
        import torch

        return int(torch.cuda.memory_allocated(torch.device(device)))
    if kind == "cpu":
        try:
            resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    return None


def release_memory() -> None:
    """Hand memory no object holds any more back: a full collection (a pipeline's modules sit in cycles), then
    CUDA's cached blocks back to the driver, where other sets and processes can take them."""
    gc.collect()
    torch = sys.modules.get("torch")  # never imported (the composite engine alone): no device memory to hand back
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
