"""Choosing the engine: `auto`, `composite` or `diffusion`, and saying why."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines import paths
from pipelines.engines.composite import CompositeEngine
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.errors import EngineUnavailable
from pipelines.interface import Engine
from pipelines.models.model_sets import Arch, ModelSet, Variant, find_model_set, require_model_set

EngineKind = Literal["auto", "composite", "diffusion"]


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str


def load_engine(
    kind: EngineKind = "auto",
    weights_dir: Path | None = None,
    *,
    arch: Arch | None = None,
    variant: Variant = "plus",
    options: DiffusionOptions | None = None,
) -> EngineChoice:
    """Build the engine asked for. `auto`: diffusion when a complete model set is found, else composite.

    `diffusion` with no usable model set raises WeightsError (what is missing, how to get it).
    """
    if kind == "composite":
        return EngineChoice(CompositeEngine(), "composite engine asked for")
    if kind == "diffusion":
        model_set = require_model_set(_weights_dir(weights_dir), arch, variant)
        return EngineChoice(_diffusion(model_set, options), f"diffusion engine asked for, model set {model_set.folder}")
    model_set = find_model_set(_weights_dir(weights_dir), arch, variant)
    if model_set is None:
        return EngineChoice(
            CompositeEngine(), f"no complete model set in {_weights_dir(weights_dir)}, using the composite engine"
        )
    if not _diffusers_installed():
        return EngineChoice(
            CompositeEngine(), "model set found but diffusers is not installed (pip install 'segswap[diffusion]')"
        )
    return EngineChoice(_diffusion(model_set, options), f"complete model set found in {model_set.folder}")


def _weights_dir(weights_dir: Path | None) -> Path:
    return Path(weights_dir) if weights_dir is not None else paths.weights_dir()


def _diffusers_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))


def _diffusion(model_set: ModelSet, options: DiffusionOptions) -> Engine:
    if not _diffusers_installed():
        raise EngineUnavailable(
            "the diffusion engine needs torch, diffusers and transformers: pip install 'segswap[diffusion]'"
        )
    from pipelines.engines.diffusion.engine import DiffusionEngine  # torch is imported only when the model is used

    return DiffusionEngine(model_set, options)
