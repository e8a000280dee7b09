"""The plain values that travel from the caller to an engine and back."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields

from PIL import Image

from pipelines.errors import InvalidInput
from pipelines.imageops import VISIBLE_ALPHA

MAX_SEED = 2**32 - 1
ERASE = "erase"  # the mode that removes what the mask covers: no object
MODES = ("auto", "object", "pattern", ERASE)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class SwapJob:
    """One swap: decoded images and the contract's parameters.

    `main_image` is RGB, `mask_image` any mode (normalised by the engine),
    `object_image` RGB or RGBA (alpha marks the object's own pixels); None only when erasing (mode "erase",
    where an object is ignored). `seed` is already resolved: never -1 here.
    """

    main_image: Image.Image
    mask_image: Image.Image
    object_image: Image.Image | None = None
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 30
    seed: int = 42
    growmask: int = 5
    fashion_strength: float = 1.0
    subject_strength: float = 1.0
    horizontal_repeat: int = 1
    vertical_repeat: int = 1
    guidance_scale: float = 7.5
    mode: str = "auto"  # object, pattern, auto (pattern when a repeat is above 1), or erase
    lora: str = ""  # a LoRA of the model set's loras/ folder (pipelines/models/loras.py); "" = none
    lora_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidInput(f"must be between 0 and {MAX_SEED} once resolved", "seed")
        if self.mode not in MODES:
            raise InvalidInput(f"must be one of {', '.join(MODES)}", "mode")
        if self.object_image is None and self.mode != ERASE:
            raise InvalidInput(f"is required unless mode is {ERASE}", "object_image")
        if self.object_image is not None:
            check_object(self.object_image)


def check_object(image: Image.Image) -> None:
    """An object must show something: one fully transparent would place nothing, a silent erase."""
    if image.mode in ALPHA_MODES and image.getchannel("A").getextrema()[1] <= VISIBLE_ALPHA:
        raise InvalidInput(
            f"the object image is fully transparent (no alpha above {VISIBLE_ALPHA} anywhere): nothing to place",
            "object_image",
        )


IMAGE_FIELDS = ("main_image", "mask_image", "object_image")


def build_job(values: Mapping[str, object], images: Mapping[str, Image.Image]) -> SwapJob:
    """The job from request values and decoded images: every SwapJob field present in `values` is taken
    (others, such as output format, are ignored), the seed resolved, the scene made RGB. An erase takes no
    object, even where one was sent."""
    params = {f.name: values[f.name] for f in fields(SwapJob) if f.name not in IMAGE_FIELDS and f.name in values}
    if "seed" in params:
        params["seed"] = resolve_seed(int(params["seed"]))
    return SwapJob(
        main_image=images["main_image"].convert("RGB"),
        mask_image=images["mask_image"],
        object_image=None if params.get("mode") == ERASE else images.get("object_image"),
        **params,
    )


def resolve_seed(seed: int) -> int:
    """The contract's `-1` means random; the seed actually used is reported back."""
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else seed
