"""Few-step weights: the LCM-LoRA that lets an SD set denoise in 4-8 steps without guidance.

Each SD arch has one LoRA set, laid out as its Hub repository ships it, next to the model sets
(`<weights_dir>/sdxl-lcm/pytorch_lora_weights.safetensors`, see pipelines/models/manifest.toml):
latent-consistency/lcm-lora-sdxl and latent-consistency/lcm-lora-sdv1-5, trained on the SD base UNets; a
LoRA touches the attention, feed-forward and convolution weights, not the 9-channel input conv an inpainting
UNet adds, so it applies to the inpainting UNets as it is. The engine fuses it into the UNet at load
(pipelines/engines/diffusion/engine.py).

How the contract's steps (10-100) map: FEW_STEPS_MIN up to 35 steps, one more for every 8 after, at most
FEW_STEPS_MAX (LCM-LoRA's card: 2-8 steps, 4 recommended); guidance is off (scale 1: the LoRA was distilled
with guidance built in), so the negative prompt has no effect in this mode.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import WeightsError

LORA_ARCH = "lcm-lora"  # the manifest's arch for these sets
LORA_SETS: dict[str, str] = {"sdxl": "sdxl-lcm", "sd15": "sd15-lcm"}
LORA_FILE = "pytorch_lora_weights.safetensors"
FEW_STEPS_MIN, FEW_STEPS_MAX = 4, 8
STEPS_PER_EXTRA = 8


def few_steps(steps: int) -> int:
    """The denoising steps few-step mode runs for the contract's `steps`."""
    return max(FEW_STEPS_MIN, min(FEW_STEPS_MAX, int(steps / STEPS_PER_EXTRA + 0.5)))


def lora_file(set_folder: Path, arch: str) -> Path:
    """The few-step LoRA for the set at `set_folder` (next to it, under its own set name); a clear WeightsError
    naming the download when it is not there."""
    name = LORA_SETS.get(arch)
    if name is None:
        raise WeightsError(f"few-step mode has no LoRA for {arch} sets (only for {', '.join(LORA_SETS)})")
    path = Path(set_folder).parent / name / LORA_FILE
    if not path.is_file():
        raise WeightsError(
            f"few-step mode needs the LCM-LoRA at {path}: run `segswap weights download {name}` "
            "(or turn few-step mode off)"
        )
    return path
