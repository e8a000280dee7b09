"""FP8 on Hopper (and Ada): the denoiser's linear layers in float8, by torchao's dynamic quantisation.

Weights are stored in float8 e4m3 with a scale per output row, and each activation is cast to float8 per row
just before its matmul (what diffusers documents as TorchAO `float8dq_e4m3_row`). Convolutions, norms and the
VAE stay in bf16. It needs float8 tensor cores (compute capability 8.9+) and torchao (`pip install
".[fp8]"`); it pays off with torch.compile on, which fuses the activation casts into the matmuls.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from pipelines.errors import EngineUnavailable

MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first with float8 tensor cores
FUSED_PARTS = ("to_q", "to_k", "to_v")


def unsupported(device: torch.device) -> str | None:
    """Why FP8 cannot run on `device`, or None when it can."""
    if importlib.util.find_spec("torchao") is None:
        return 'SEGSWAP_FP8 needs torchao: pip install ".[fp8]"'
    if device.type != "cuda":
        return f"SEGSWAP_FP8 needs an NVIDIA GPU with float8 tensor cores (Ada or Hopper); this engine is on {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return f"SEGSWAP_FP8 needs compute capability 8.9+ (Ada or Hopper); {name} has {capability[0]}.{capability[1]}"
    return None


def require(device: torch.device) -> None:
    """Refuse at load, with a sentence, a setting this machine cannot honour."""
    reason = unsupported(device)
    if reason is not None:
        raise EngineUnavailable(reason)


def fp8_config():
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def quantize_linears(model: nn.Module, config=None) -> int:
    """Quantise `model`'s linear layers in place with `config` (default: FP8 per row); returns how many."""
    from torchao.quantization import quantize_

    chosen = quantizable(model)
    if chosen:
        quantize_(model, config if config is not None else fp8_config(), filter_fn=lambda module, _: module in chosen)
    return len(chosen)


def quantizable(model: nn.Module) -> set[nn.Module]:
    """The linear layers worth quantising: both sides multiples of 16 (float8 matmuls need it), and not the q/k/v
    of a fused self-attention, which are views of its fused weight that the fused processor never calls
    (quantising them would only store them a second time)."""
    unused = set()
    for module in model.modules():
        if getattr(module, "fused_projections", False):
            unused.update(getattr(module, part) for part in FUSED_PARTS if hasattr(module, part))
    return {
        module
        for module in model.modules()
        if isinstance(module, nn.Linear)
        and module not in unused
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    }
