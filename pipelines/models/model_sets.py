"""Where the parts of a model set live on disk, and whether a set is complete.

A model set is one folder (`<weights_dir>/<set name>`: sdxl, sd15, flux2-klein, flux2-klein-base) laid
out as a real download lays it out (see pipelines/models/manifest.toml):

    base/         a diffusers pipeline folder (model_index.json, unet/ or transformer/, vae/, ...)
    ip_adapter/   SD sets: the h94/IP-Adapter repository layout, original checkpoint format

or, for a model shared as one file (see pipelines/models/single_file.py):

    base.safetensors  the UNet, VAE and text encoder(s) in the original single-file key format
    base/             the same diffusers folder with only its configs and tokenizers, no weights
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines.errors import WeightsError
from pipelines.models.mask_files import DETECTOR, SAM2

Arch = Literal["sdxl", "sd15", "flux2"]
Variant = Literal["plus", "plain"]

ARCHS: tuple[Arch, ...] = ("sdxl", "sd15", "flux2")
# The model sets by name, with their arch, in `auto`'s order of preference: FLUX.2 [klein] 4B distilled
# (the reference image in attention keeps identity and patterns best, 4 steps), SDXL + IP-Adapter, the
# undistilled klein base (same fidelity at 10x the model evaluations), SD1.5 + IP-Adapter (lightest).
SETS: dict[str, Arch] = {"flux2-klein": "flux2", "sdxl": "sdxl", "flux2-klein-base": "flux2", "sd15": "sd15"}
# The composite engine (placement only, no weights) served as a set of its own, beside the diffusion sets.
COMPOSITE = "composite"
# The selection models' sets (pipelines/masks): each named for its arch, laid out as its Hub repository.
MASK_SETS: tuple[str, ...] = (SAM2, DETECTOR)
IMAGE_ENCODER = "models/image_encoder"
ADAPTERS: dict[tuple[Arch, Variant], str] = {
    ("sdxl", "plain"): "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
    ("sdxl", "plus"): "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
    ("sd15", "plain"): "models/ip-adapter_sd15.safetensors",
    ("sd15", "plus"): "models/ip-adapter-plus_sd15.safetensors",
}
BASE_COMPONENTS: dict[Arch, tuple[str, ...]] = {
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "flux2": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
}
WEIGHTED_COMPONENTS: dict[Arch, tuple[str, ...]] = {
    "sdxl": ("unet", "vae"),
    "sd15": ("unet", "vae"),
    "flux2": ("transformer", "vae", "text_encoder"),
}
CHECKPOINT = "base.safetensors"
# What base/ must hold next to a single-file checkpoint: the configs and tokenizers, no weights.
CONFIG_FILES: dict[str, str] = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "tokenizer": "tokenizer",
    "tokenizer_2": "tokenizer_2",
    "scheduler": "scheduler/scheduler_config.json",
}


@dataclass(frozen=True)
class ModelSet:
    """The paths of one installed model set, with the IP-Adapter variant to load."""

    arch: Arch
    folder: Path
    variant: Variant = "plus"

    @property
    def name(self) -> str:
        """The set's name: its arch for SD sets; for FLUX.2 [klein] whether base/ is the step-distilled model."""
        if self.arch != "flux2":
            return self.arch
        return "flux2-klein" if self.distilled else "flux2-klein-base"

    @property
    def distilled(self) -> bool:
        """A step-distilled model (FLUX.2 [klein] 4B): model_index.json says `is_distilled`."""
        try:
            return bool(json.loads((self.base / "model_index.json").read_text(encoding="utf-8")).get("is_distilled"))
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def uses_ip_adapter(self) -> bool:
        return self.arch != "flux2"

    @property
    def base(self) -> Path:
        return self.folder / "base"

    @property
    def checkpoint_file(self) -> Path:
        """Where a single-file base checkpoint goes (`base.safetensors`)."""
        return self.folder / CHECKPOINT

    @property
    def checkpoint(self) -> Path | None:
        """The single-file base checkpoint when the set has one (SD sets only); base/ then holds only configs."""
        path = self.checkpoint_file
        return path if self.uses_ip_adapter and path.is_file() else None

    @property
    def ip_adapter_dir(self) -> Path:
        return self.folder / "ip_adapter"

    @property
    def adapter_file(self) -> Path:
        return self.ip_adapter_dir / ADAPTERS[(self.arch, self.variant)]

    @property
    def image_encoder(self) -> Path:
        return self.ip_adapter_dir / IMAGE_ENCODER

    def ip_adapter_kwargs(self) -> dict[str, str]:
        """Where diffusers' `load_ip_adapter` finds this set's adapter and image encoder."""
        adapter = Path(ADAPTERS[(self.arch, self.variant)])
        return {
            "pretrained_model_name_or_path_or_dict": str(self.ip_adapter_dir),
            "subfolder": adapter.parent.as_posix(),
            "weight_name": adapter.name,
            "image_encoder_folder": IMAGE_ENCODER,
        }

    def missing(self) -> list[str]:
        """Paths (relative to the set folder) that a complete set needs and this one lacks."""
        single_file = self.checkpoint is not None
        needed = [self.base / "model_index.json"]
        if single_file:  # the weights are in the checkpoint; base/ only configures
            needed += [self.base / CONFIG_FILES[part] for part in BASE_COMPONENTS[self.arch]]
        else:
            needed += [self.base / part for part in BASE_COMPONENTS[self.arch]]
        if self.uses_ip_adapter:
            needed += [self.adapter_file, self.image_encoder / "config.json"]
        missing = [path for path in needed if not path.exists()]
        if self.uses_ip_adapter and self.image_encoder.is_dir() and not _has_weights(self.image_encoder):
            missing.append(self.image_encoder / "model.safetensors")
        for part in () if single_file else WEIGHTED_COMPONENTS[self.arch]:
            if (self.base / part).is_dir() and not _has_weights(self.base / part):
                missing.append(self.base / part / "diffusion_pytorch_model.safetensors")
        return [str(path.relative_to(self.folder)) for path in missing]


def set_of_engine(engine_name: str) -> str:
    """The model set an engine runs, from its name: diffusion/sd15 runs sd15; composite is a set of its own."""
    return engine_name.removeprefix("diffusion/")


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def model_set_at(folder: Path, variant: Variant = "plus") -> ModelSet:
    """The set laid out in `folder`, its arch read from what base/ holds."""
    return ModelSet(_arch_of(Path(folder) / "base"), Path(folder), variant)


def find_model_set(weights_dir: Path, name: str | None = None, variant: Variant = "plus") -> ModelSet | None:
    """The set `name` under `weights_dir` if complete; with no name, the first complete one in SETS' order; or None.

    `weights_dir` may also be a set folder itself (one holding base/).
    """
    for candidate in _candidates(Path(weights_dir), name, variant):
        if not candidate.missing():
            return candidate
    return None


def require_model_set(weights_dir: Path, name: str | None = None, variant: Variant = "plus") -> ModelSet:
    """Like find_model_set, but a missing or incomplete set is a WeightsError saying what is missing."""
    found = find_model_set(weights_dir, name, variant)
    if found is not None:
        return found
    incomplete = [c for c in _candidates(Path(weights_dir), name, variant) if c.folder.is_dir()]
    how = f"get one with `segswap weights download {name or 'sdxl'}` and point --weights / SEGSWAP_WEIGHTS_DIR at it"
    if not incomplete:
        raise WeightsError(f"no model set in {weights_dir}: {how}")
    first = incomplete[0]
    missing = first.missing()
    raise WeightsError(
        f"model set {first.folder} is incomplete, missing {', '.join(missing[:4])}"
        + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        + f": {how}"
    )


def _candidates(weights_dir: Path, name: str | None, variant: Variant) -> list[ModelSet]:
    """The folders to look at: `weights_dir` itself when it is a set folder (one holding base/), else
    `<weights_dir>/<name>` for the named set or for every set in SETS' order."""
    if name is not None and name not in SETS:
        raise WeightsError(f"unknown model set {name!r}; known: {', '.join(SETS)}")
    if (weights_dir / "base").is_dir():
        found = ModelSet(_arch_of(weights_dir / "base"), weights_dir, variant)
        if name is not None and found.name != name:
            raise WeightsError(f"{weights_dir} holds the model set {found.name}, not {name}")
        return [found]
    names = [name] if name else list(SETS)
    return [ModelSet(SETS[n], weights_dir / n, variant) for n in names]


def _arch_of(base: Path) -> Arch:
    """What a base/ folder holds: the pipeline class model_index.json names, else its parts' folders."""
    try:
        pipeline = str(json.loads((base / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        pipeline = ""
    if "Flux2" in pipeline or (base / "transformer").exists():
        return "flux2"
    if "XL" in pipeline or (base / "text_encoder_2").exists():
        return "sdxl"
    return "sd15"
