"""A random LCM-LoRA for a UNet (tiny or full size), in the key format the real files use (kohya-style
`lora_unet_` names, `lora_down` / `lora_up` / `alpha`), on the modules the LCM-LoRA training scripts target."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn

from pipelines.models.few_step import LORA_FILE

RANK = 4
ALPHA = 2.0
# The module names the LCM-LoRA scripts (diffusers' train_lcm_distill_lora_sd*.py) put a LoRA on.
TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def write_lora(folder: Path, unet: UNet2DConditionModel, seed: int, rank: int = RANK, scale: float = 0.02) -> Path:
    """Random low-rank updates for every targeted Linear/Conv2d of `unet` (IP-Adapter's own layers excluded), as
    `<folder>/pytorch_lora_weights.safetensors`. The full-size bench writes rank 64, the real LCM-LoRAs' rank."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith(TARGETS) or "processor" in name or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        else:
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        tensors[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=generator) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(up_shape, generator=generator) * scale
        tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LORA_FILE
    save_file({key: value.to(torch.float16).contiguous() for key, value in tensors.items()}, str(path))
    return path


# The attention projections a style LoRA usually targets, in the UNet's and FLUX.2's transformer blocks.
REQUEST_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def write_request_lora(
    path: Path, model: nn.Module, prefix: str, seed: int, rank: int = RANK, scale: float = 0.3
) -> Path:
    """A random LoRA for a request (pipelines/models/loras.py) in diffusers' PEFT key format
    (`<prefix>.<module>.lora_A.weight` / `lora_B.weight`; prefix "unet" or "transformer"), on the attention
    projections of `model`, IP-Adapter's excluded; non-zero both ways so it changes the output."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not name.endswith(REQUEST_TARGETS) or "processor" in name or not isinstance(module, nn.Linear):
            continue
        key = f"{prefix}.{name}"
        tensors[f"{key}.lora_A.weight"] = torch.randn((rank, module.in_features), generator=generator) * scale
        tensors[f"{key}.lora_B.weight"] = torch.randn((module.out_features, rank), generator=generator) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path
