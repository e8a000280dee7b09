"""Choosing the engine: `auto`, `composite` or `diffusion`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .composite import CompositeEngine
from .errors import EngineUnavailable
from .protocol import Engine

log = logging.getLogger(__name__)

EngineKind = Literal["auto", "composite", "diffusion"]


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str = field(default="")


def load_engine(kind: EngineKind = "auto", weights_dir: Path | None = None) -> EngineChoice:
    """Build the engine asked for, and say why it is the one in use."""
    if kind == "composite":
        return EngineChoice(CompositeEngine(), "composite engine asked for")
    if kind == "diffusion":
        raise EngineUnavailable(
            "the diffusion engine needs a model set: run `segswap weights download sdxl` on a machine "
            "with internet and point --weights (or SEGSWAP_WEIGHTS_DIR) at the folder"
        )
    return EngineChoice(CompositeEngine(), "no complete model set found, using the composite engine")
