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
from pipelines.models.model_sets import ModelSet, Variant, find_model_set, require_model_set
from pipelines.models.revisions import note_loaded

EngineKind = Literal["auto", "composite", "diffusion"]


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str


def load_engine(
    kind: EngineKind = "auto",
    weights_dir: Path | None = None,
    *,
    model_set: str | None = None,
    variant: Variant = "plus",
    options: DiffusionOptions | None = None,
) -> EngineChoice:
    """Build the engine asked for. `auto`: diffusion when a complete model set is found, else composite.

    `model_set` names the set to load (sdxl, sd15, flux2-klein, flux2-klein-base); without one, the first
    complete set in model_sets.SETS' order. `diffusion` with no usable model set raises WeightsError (what is
    missing, how to get it).
    """
    options = options or DiffusionOptions()

    def composite() -> CompositeEngine:
        return CompositeEngine(options.object_cache_bytes)

    if kind == "composite":
        return EngineChoice(composite(), "composite engine asked for")
    if kind == "diffusion":
        found = require_model_set(_weights_dir(weights_dir), model_set, variant)
        return EngineChoice(diffusion_engine(found, options), f"diffusion engine asked for, model set {found.folder}")
    found = find_model_set(_weights_dir(weights_dir), model_set, variant)
    if found is None:
        return EngineChoice(
            composite(), f"no complete model set in {_weights_dir(weights_dir)}, using the composite engine"
        )
    if not _diffusers_installed():
        return EngineChoice(
            composite(), "model set found but diffusers is not installed (pip install 'segswap[diffusion]')"
        )
    return EngineChoice(diffusion_engine(found, options), f"complete model set found in {found.folder}")


def _weights_dir(weights_dir: Path | None) -> Path:
    return Path(weights_dir) if weights_dir is not None else paths.weights_dir()


def _diffusers_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))


def diffusion_engine(model_set: ModelSet, options: DiffusionOptions | None = None) -> Engine:
    """The diffusion engine for a model set's arch (FLUX.2 [klein] or SD with IP-Adapter), its files checked
    against the manifest's pins (what an output's record may claim of them: pipelines/models/revisions.py)."""
    if not _diffusers_installed():
        raise EngineUnavailable(
            "the diffusion engine needs torch, diffusers and transformers: pip install 'segswap[diffusion]'"
        )
    # torch is imported only when a model is used
    if model_set.arch == "flux2":
        from pipelines.engines.diffusion.flux2 import Flux2Engine

        engine: Engine = Flux2Engine(model_set, options)
    else:
        from pipelines.engines.diffusion.engine import DiffusionEngine

        engine = DiffusionEngine(model_set, options)
    note_loaded(engine.name, model_set)
    return engine
