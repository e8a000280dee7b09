"""The /v1/seg-swap contract: the request body with its types, defaults and ranges.

Field names, defaults and ranges are those of the hosted SegSwap v0.1 API;
`negative_prompt`, `guidance_scale`, `mode`, `model_set`, `lora` and `lora_scale` are our documented extensions.
`mode: erase` removes what the mask covers: `object_image` is then optional, and ignored (never fetched) if sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipelines.job import ERASE, MAX_SEED
from pipelines.masks import Selector
from pipelines.masks.selector import MAX_POINTS, MAX_TEXT
from pipelines.models.loras import MAX_SCALE as LORA_MAX_SCALE
from server.serving.priority import BATCH, BATCH_EVERY, Priority

IMAGE_DESCRIPTION = "an http(s) URL, raw base64, or a data:image/...;base64, URI (PNG, JPEG or WEBP)"


REGION_FIELDS = ("mask_image", "box", "points", "text")  # exactly one says which region to replace


class Selection(BaseModel):
    """The region given by where it is instead of a painted mask (extension fields): one of box, points, text."""

    box: list[float] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="Extension: select by a box [x0, y0, x1, y1] in main-image pixels (x1, y1 exclusive).",
    )
    points: list[list[float]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_POINTS,
        description="Extension: select by points [[x, y, label], ...] in main-image pixels; label 1 = inside the "
        "object, 0 = outside.",
    )
    text: str | None = Field(
        None,
        max_length=MAX_TEXT,
        description='Extension: select by words ("the sofa"); needs the sam2 and owlv2 model sets.',
    )

    @field_validator("box", "points", mode="before")
    @classmethod
    def _from_text(cls, value: object, info) -> object:
        """Arrays sent as text (a multipart form, a command line): JSON (`[10, 20, 300, 400]`), or plain
        numbers (`10,20,300,400`; points as `x,y,label;x,y,label`)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text.startswith("["):
            rows = [f"[{row}]" for row in text.split(";")] if info.field_name == "points" else [text]
            text = "[" + ",".join(rows) + "]"
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ValueError("must be a JSON array, or numbers separated by commas") from None

    def exactly_one(self, *names: str):
        """This request, if exactly one of the fields `names` was sent; else a ValueError saying which were."""
        given = [name for name in names if getattr(self, name) is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise ValueError(f"give the region as exactly one of {', '.join(names)}{got}")
        return self

    def selector(self) -> Selector | None:
        """The selection, or None when the request sent none."""
        if self.box is None and self.points is None and self.text is None:
            return None
        return Selector.build(self.box, self.points, self.text)


class SwapRequest(Selection):
    """Body of POST /v1/seg-swap."""

    model_config = ConfigDict(extra="forbid")

    main_image: str = Field(min_length=1, description=f"The scene: {IMAGE_DESCRIPTION}.")
    mask_image: str | None = Field(
        None,
        min_length=1,
        description=f"The region to replace, white (or opaque alpha) on black: {IMAGE_DESCRIPTION}. "
        "Resized to the main image (nearest-neighbour) when sizes differ. Required unless the region is selected "
        "by `box`, `points` or `text` instead.",
    )
    object_image: str | None = Field(
        None,
        min_length=1,
        description=f"The object or pattern to put there: {IMAGE_DESCRIPTION}. Required unless `mode` is erase "
        "(then ignored, and not fetched).",
    )
    prompt: str = Field("", max_length=4000, description="Text describing the scene or the object.")
    negative_prompt: str = Field(
        "", max_length=4000, description="Extension: what the result should not show (diffusion engine)."
    )
    steps: int = Field(30, ge=10, le=100, description="Number of denoising steps.")
    seed: int = Field(
        42, ge=-1, le=MAX_SEED, description="Random seed for reproducibility; -1 picks one (returned in x-seed-value)."
    )
    growmask: int = Field(
        5, ge=0, le=20, description="Grow the mask by this many pixels (disk dilation, main-image pixels)."
    )
    fashion_strength: float = Field(
        1.0,
        ge=0,
        le=1,
        description="How much of the object's own colour, texture and pattern is kept versus adapted to the scene "
        "(composite: colour transfer toward the scene at 0; diffusion: the style block's IP-Adapter scale).",
    )
    subject_strength: float = Field(
        1.0,
        ge=0,
        le=1,
        description="How faithfully the object itself appears (composite: opacity of the placement; diffusion: how "
        "much of the placed pixels survives denoising, and the IP-Adapter scale).",
    )
    horizontal_repeat: int = Field(
        1, ge=1, le=10, description="Tile the object image this many times across (patterns)."
    )
    vertical_repeat: int = Field(1, ge=1, le=10, description="Tile the object image this many times down (patterns).")
    guidance_scale: float = Field(
        7.5, ge=0, le=30, description="Extension: classifier-free guidance scale (diffusion engine)."
    )
    mode: Literal["auto", "object", "pattern", "erase"] = Field(
        "auto",
        description="Extension: object (cut out, placed bottom-centre in the mask), pattern (tiled over the mask, "
        "shaded by the original), auto (pattern when a repeat is above 1, else object), or erase: remove what the "
        "mask covers, no object needed (composite: filled from the surroundings; diffusion: inpainted without the "
        "object, from `prompt`, else a neutral prompt of empty background; `subject_strength` is how much of the "
        "fill the model starts from).",
    )
    lora: str = Field(
        "",
        max_length=128,
        description="Extension (diffusion engine): a LoRA of the model set's loras/ folder, by file name without "
        "`.safetensors` (a plain name: no path); empty = none. An unknown name is a 400 naming the available ones.",
    )
    lora_scale: float = Field(1.0, ge=0, le=LORA_MAX_SCALE, description="Extension: the LoRA's weight; 0 = none.")
    image_format: Literal["png", "jpeg", "webp"] = Field("png", description="Output image format.")
    image_quality: int = Field(95, ge=10, le=100, description="Output quality for jpeg and webp.")
    base64: bool = Field(False, description="false: the raw image bytes; true: JSON with the image as base64.")
    model_set: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Extension: the model set that makes the image (sd15, sdxl, flux2-klein, flux2-klein-base, "
        "composite), among those the server serves (GET /v1/models); default: the server's default set.",
    )

    @model_validator(mode="after")
    def _one_region(self) -> SwapRequest:
        if all(getattr(self, name) is None for name in REGION_FIELDS):
            raise ValueError("field 'mask_image' is required (or select the region by box, points or text instead)")
        return self.exactly_one(*REGION_FIELDS)

    @field_validator("object_image", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        """An empty value (a form's file input left empty) is no object: ignored by an erase, missing otherwise."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _object_unless_erasing(self) -> SwapRequest:
        """An erase takes no object (one sent is dropped here, so it is never fetched); any other mode needs one."""
        if self.mode == ERASE:
            self.object_image = None
        elif self.object_image is None:
            missing = PydanticCustomError("missing", "Field required", {"unless": f"mode is {ERASE}"})
            details = InitErrorDetails(type=missing, loc=("object_image",), input=None)
            raise ValidationError.from_exception_data(type(self).__name__, [details])
        return self


class MaskRequest(Selection):
    """Body of POST /v1/seg-mask."""

    model_config = ConfigDict(extra="forbid")

    main_image: str = Field(min_length=1, description=f"The image to select in: {IMAGE_DESCRIPTION}.")
    base64: bool = Field(False, description="false: the mask as PNG bytes; true: JSON with the mask as base64.")

    @model_validator(mode="after")
    def _one_selector(self) -> MaskRequest:
        return self.exactly_one("box", "points", "text")


class MaskResponse(BaseModel):
    """Body of a 200 answer from /v1/seg-mask when the request asked for `base64: true`."""

    mask: str = Field(description="The mask as a base64 PNG, the main image's size: white = selected.")
    segmenter: str = Field(description="What made it: grabcut, sam2, sam2+owlv2.")
    selected_share: float = Field(description="Share of the image's pixels selected.")
    selection_time: float = Field(description="Seconds spent selecting.")


class AsyncSwapRequest(SwapRequest):
    """Body of POST /v2/seg-swap: the v1 body, plus where to send the outcome and the job's priority class."""

    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="Extension: a public http(s) URL that receives the status body (POST, JSON) when the job completes "
        "or fails, signed in x-segswap-signature as sha256=HMAC-SHA256(key=sha256_hex(your API key), body).",
    )
    priority: Priority = Field(
        BATCH,
        description="Extension: `interactive` when someone waits for this job (it goes before batch work, as v1 "
        "requests do), `batch` (the default) for bulk work. Batch work is never starved: after "
        f"SEGSWAP_BATCH_EVERY ({BATCH_EVERY} by default) interactive jobs in a row have started while a batch job "
        "waited, the oldest batch job starts next.",
    )


class SubmitResponse(BaseModel):
    request_id: str
    status: str
    status_url: str
    response_url: str


class JobMetrics(BaseModel):
    queue_time: float
    inference_time: float
    total_time: float


class JobStatus(BaseModel):
    request_id: str
    status: Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
    metrics: JobMetrics
    error: str | None = None


class JobResult(JobStatus):
    output: str | None = Field(None, description="URL of the image on this server (COMPLETED jobs).")
    image: str | None = Field(None, description="The image as base64, when the request asked for base64.")
    seed: int | None = None


class SwapResponse(BaseModel):
    """Body of a 200 answer when the request asked for `base64: true`."""

    image: str = Field(description="The output image, base64-encoded.")
    image_format: str
    seed: int = Field(description="The seed used.")
    generation_time: float = Field(description="Seconds spent producing the image.")
    engine: str = Field(description="The engine that made the image (composite, diffusion/sdxl, diffusion/sd15).")


class ModelCard(BaseModel):
    """One model set in GET /v1/models: OpenAI's model object, with what a SegSwap client needs besides."""

    id: str = Field(description="The set's name, as `model_set` (or OpenAI's `model`) takes it.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the set was loaded (configured, while it loads).")
    owned_by: str = "segswap"
    arch: str = Field(description="sd15, sdxl, flux2, or composite (no weights).")
    license: str = Field(description="The licences of its weights, as the weights manifest states them.")
    loaded: bool = Field(description="Its workers are warm: requests may name it.")
    state: Literal["loading", "loaded", "unloading", "unloaded", "failed"] = Field(
        description="Where its load stands (an admin key changes it: POST /v1/models/{id}/load or /unload)."
    )
    reason: str | None = Field(None, description="Why its last load failed (state failed).")
    default: bool = Field(description="It runs requests that name no set.")
    loras: list[str] = Field(description="The LoRAs a request may name for it (`lora`): its loras/ folder.")


class UnloadResult(BaseModel):
    """Body of POST /v1/models/{id}/unload: the set, and the memory its devices held before and after."""

    model: ModelCard
    seconds: float = Field(description="Waiting for its jobs, stopping its workers and freeing its memory.")
    freed_bytes: int | None = Field(
        description="What its devices hold less now, summed (CUDA: allocated tensors; CPU: the process's resident "
        "size); null where it cannot be read, 0 when it was not loaded."
    )
    held_before: dict[str, int | None] = Field(description="Bytes held per device before.")
    held_after: dict[str, int | None] = Field(description="Bytes held per device after.")


class ModelList(BaseModel):
    """Body of GET /v1/models, in OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorResponse(BaseModel):
    error: str = Field(description="One sentence saying what is wrong.")


def json_field_label(name: str) -> str:
    return f"field '{name}'"


def describe_validation_error(exc: ValidationError, label: Callable[[str], str] = json_field_label) -> str:
    """The first problem of a pydantic error, as one sentence that names the field and the rule."""
    return describe_error(exc.errors(include_url=False)[0], label)


def describe_error(err: dict, label: Callable[[str], str] = json_field_label) -> str:
    """One of pydantic's error details as one sentence, the field named by `label`."""
    if not err["loc"] and err["type"] == "value_error":  # a rule across fields: its own sentence
        return str(err["ctx"]["error"])
    field = label(".".join(str(part) for part in err["loc"]) or "body")
    if err["type"] == "extra_forbidden":
        return f"unknown {field}"
    if err["type"] == "missing":
        unless = err.get("ctx", {}).get("unless")
        return f"{field} is required" + (f" unless {unless}" if unless else "")
    rule = err["msg"][0].lower() + err["msg"][1:]
    given = err.get("input")
    shown = (
        f" (got {given!r})"
        if isinstance(given, (int, float, bool, type(None))) or (isinstance(given, str) and len(given) <= 40)
        else ""
    )
    return f"{field}: {rule}{shown}"
