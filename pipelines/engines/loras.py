"""Whether an engine can run a request's LoRA: asked before any work (a v2 submit, a swap's first stage)."""

from __future__ import annotations

from pipelines.errors import InvalidInput


def check_lora(engine, name: str) -> None:
    """An InvalidInput (field lora) unless `engine` runs LoRA `name` ("" = none): a diffusion engine whose model
    set's loras/ folder holds it (pipelines/models/loras.py)."""
    if not name:
        return
    loras = getattr(engine, "loras", None)
    if loras is None:
        raise InvalidInput(f"LoRAs need a diffusion model set; this server runs the {engine.name} engine", "lora")
    loras.check(name)
