"""POST /v1/images/edits: OpenAI's images API, so its SDKs (`client.images.edit(...)`) and the clients built on
them work with `base_url` pointed here.

OpenAI's fields, as SegSwap reads them:
- `image`: two images (sent as `image[]`): the scene first, then the object or pattern to put in it; or the
  scene alone: an edit by the prompt inside the mask (`mode` erase: the diffusion engines inpaint the region from
  the prompt with no object; the composite engine, which reads no prompt, erases it);
- `mask`: OpenAI's convention, transparent = edit (an image without alpha: white = edit); instead of a mask,
  SegSwap's `box`, `points` or `text` may select the region;
- `prompt` (required); `n` 1-4: seeds seed, seed+1, ... (n images cost n credits); `size`: `auto` or the
  scene's own size; `response_format`: `b64_json`, or `url` (a `data:` URL: this server keeps no files for
  this route); `output_format` png, jpeg or webp; `output_compression` 0-100 (the jpeg/webp encoder's
  quality, as sent: 0 is allowed here, though `image_quality` starts at 10);
- `model`: a model set this server serves (GET /v1/models), as `model_set`; OpenAI's own model names
  (gpt-image-1, dall-e-2, ...) run the server's default set;
- `quality`, `background`, `input_fidelity`, `user` and the other generation hints are accepted and ignored: the
  server's engine decides.
SegSwap's own parameters (seed, steps, growmask, strengths, repeats, mode, ...) come as extra form fields, which
is what the SDK's `extra_body` sends. Errors on this route have OpenAI's shape (server/api/errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from pipelines import build_job
from pipelines.job import ERASE
from server.api import metering
from server.api.body import UPLOADED, read_body, read_form
from server.api.deps import CallerDep, LifecycleDep, MetricsDep, SetsDep, SettingsDep
from server.api.masks import select_region, selection_turn
from server.api.v1 import run_job
from server.contract import SwapRequest, describe_validation_error
from server.errors import BadRequest, NotAcceptable
from server.inputs.decode import decode_inputs
from server.inputs.encode import check_encodable, encode_output
from server.inputs.metadata import input_digests, output_record
from server.serving.admission import admit_to_set, refuse_if_unavailable

router = APIRouter()
MAX_N = 4
MAX_FILES = 4  # two images, a mask, one spare for clients that send a markup image
OPENAI_MODELS = ("gpt-image", "dall-e", "chatgpt-image")  # OpenAI's model names start so: the default set runs
IGNORED = {
    "quality",
    "background",
    "input_fidelity",
    "user",
    "safety_identifier",
    "moderation",
    "partial_images",
    "complexity",
    "frame_count",
    "frame_duration_ms",
    "markup",
    "svg",
}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}


class EditedImage(BaseModel):
    b64_json: str | None = Field(None, description="The image, base64 (response_format b64_json).")
    url: str | None = Field(None, description="The image as a data: URL (response_format url).")


class ImagesResponse(BaseModel):
    created: int = Field(description="Unix time the images were made.")
    data: list[EditedImage]
    output_format: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def _request_body() -> dict:
    text = {"type": "string"}
    fields = {
        "image[]": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "maxItems": 2,
            "description": "The scene, then the object or pattern (two files); or the scene alone, an edit by "
            "the prompt (mode erase: diffusion engines inpaint the mask from the prompt, the composite engine "
            "erases it).",
        },
        "mask": {"type": "string", "format": "binary", "description": "Transparent = the region to edit."},
        "prompt": text,
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
        "size": {"type": "string", "description": "auto, or the scene's own size as WxH."},
        "response_format": {"type": "string", "enum": ["b64_json", "url"]},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
        "model": {
            "type": "string",
            "description": "A model set this server serves (GET /v1/models); OpenAI's names run the default set.",
        },
    }
    schema = {"type": "object", "required": ["image[]", "prompt"], "properties": fields}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _responses() -> dict:
    errors = {
        400: "Bad value or image.",
        401: "Missing or invalid key.",
        403: "Key not allowed here.",
        406: "Not multipart, or too few credits.",
        408: "Body too slow.",
        413: "Too large.",
        429: "Busy or rate-limited.",
        500: "Internal error.",
        503: "Loading or shutting down.",
        504: "Past the deadline.",
    }
    responses: dict = {200: {"description": "The edited images.", "model": ImagesResponse}}
    responses.update({status: {"description": text, "model": OpenAIError} for status, text in errors.items()})
    return responses


@dataclasses.dataclass
class EditRequest:
    images: list[bytes]
    mask: bytes | None
    values: dict[str, str]  # the text fields: OpenAI's and SegSwap's
    n: int = 1
    size: str = "auto"
    response_format: str = "b64_json"


@router.post(
    "/v1/images/edits",
    summary="OpenAI-compatible image edit: the scene and the object (or the scene alone: an edit by the prompt) as "
    "`image[]`, the region as a mask",
    description=__doc__,
    response_model=ImagesResponse,
    responses=_responses(),
    openapi_extra=_request_body(),
)
async def images_edits(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    sets: SetsDep,
    lifecycle: LifecycleDep,
    metrics: MetricsDep,
) -> JSONResponse:
    deadline = time.monotonic() + settings.request_timeout_s
    refuse_if_unavailable(lifecycle, sets)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise NotAcceptable("send the edit as multipart/form-data, as OpenAI's images API takes it")
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    edit = _edit_request(await read_form(request, body, settings.max_body_bytes, MAX_FILES))
    contract = _contract(edit)
    served = await admit_to_set(sets, contract.model_set)
    data = {"main_image": edit.images[0]}
    if contract.object_image is not None:  # an erase leaves a second image out: not even decoded
        data["object_image"] = edit.images[1]
    if edit.mask is not None:
        data["mask_image"] = edit.mask
    selector = contract.selector()

    charged = await metering.reserve(request, caller, settings.credit_cost, images=edit.n)
    try:
        async with selection_turn(request, selector, deadline):  # a request that selects decodes in its turn
            images = await asyncio.to_thread(decode_inputs, data, settings.max_image_pixels)
            inputs = input_digests(images)
            _check_size(edit.size, images["main_image"].size)
            check_encodable(images["main_image"].size, contract.image_format)
            if "mask_image" in images:
                images["mask_image"] = openai_mask(images["mask_image"])
            if selector is not None:
                selected = await select_region(request, images["main_image"], selector, deadline)
                images["mask_image"] = selected.mask
        first = build_job(contract.model_dump(), images)
        outputs = []
        for index in range(edit.n):  # one queued job each: n images go through the queue like n requests
            job = dataclasses.replace(first, seed=(first.seed + index) % (2**32))
            outcome = await run_job(request, served.work, job, deadline, settings.request_timeout_s)
            metrics.images.labels(outcome.engine).inc()
            record = output_record(settings.output_metadata, contract.model_dump(), job.seed, outcome.engine, inputs)
            outputs.append(
                await asyncio.to_thread(
                    encode_output, outcome.image, contract.image_format, contract.image_quality, record, settings
                )
            )
    except BaseException:
        await metering.refund(request, caller, charged)
        raise
    request.state.log.update(engine=outcome.engine, seed=first.seed, n=edit.n)
    return JSONResponse(_answer(outputs, edit, contract), headers={"x-segswap-engine": outcome.engine})


def _edit_request(fields: list[tuple[str, str | bytes]]) -> EditRequest:
    images: list[bytes] = []
    mask: bytes | None = None
    values: dict[str, str] = {}
    for name, value in fields:
        if name in ("image", "image[]"):
            images.append(value if isinstance(value, bytes) else _not_a_file(name))
        elif name == "mask":
            mask = value if isinstance(value, bytes) else _not_a_file(name)
        elif isinstance(value, bytes):
            if name not in IGNORED:
                raise BadRequest(f"'{name}': only image, mask (and markup) can be files", field=name)
        elif name in values:
            raise BadRequest(f"'{name}' was sent twice; send it once", field=name)
        else:
            values[name] = value
    if len(images) not in (1, 2):
        raise BadRequest(
            "send the scene as image[], then the object or pattern to put in it; or the scene alone, to edit the "
            f"region by the prompt (diffusion engines) or erase it (composite engine) (got {len(images)} images)"
        )
    if values.get("stream", "false").lower() not in ("false", "0"):
        raise BadRequest("'stream' is not supported here: the answer comes when the images are done", field="stream")
    edit = EditRequest(images, mask, values)
    edit.n = _int(values.pop("n", "1"), "n", 1, MAX_N)
    edit.size = values.pop("size", "auto") or "auto"
    edit.response_format = values.pop("response_format", "b64_json") or "b64_json"
    if edit.response_format not in ("b64_json", "url"):
        raise BadRequest("'response_format' must be b64_json or url", field="response_format")
    return edit


def _contract(edit: EditRequest) -> SwapRequest:
    """SegSwap's contract from the form: OpenAI's names translated, hints dropped, our own fields as they are."""
    values = {name: value for name, value in edit.values.items() if name not in IGNORED | {"stream"}}
    if "prompt" not in values:
        raise BadRequest("'prompt' is required", field="prompt")
    if edit.mask is None and not {"box", "points", "text"} & set(values):
        raise BadRequest("send a mask (transparent = the region to edit), or select the region by box, points or text")
    _output_format(values)
    _model_set(values)
    compression = values.pop("output_compression", None)
    values["main_image"] = UPLOADED
    if len(edit.images) == 2:
        values["object_image"] = UPLOADED
    else:
        values.setdefault("mode", ERASE)
    if edit.mask is not None:
        values["mask_image"] = UPLOADED
    try:
        contract = SwapRequest.model_validate(values, strict=False)
    except ValidationError as exc:
        where = exc.errors()[0]["loc"]
        if where == ("object_image",):  # one image, and a mode that needs an object
            raise BadRequest(
                f"'mode' {values['mode']} needs the object as a second image[]; the scene alone is an edit by the "
                f"prompt (mode {ERASE}: diffusion engines inpaint the region from the prompt, the composite engine "
                "erases it)",
                field="mode",
            ) from None
        field = str(where[0]) if where else None
        raise BadRequest(describe_validation_error(exc, lambda name: f"'{name}'"), field=field) from None
    if compression is not None:  # OpenAI's 0-100, the encoder's quality as it is (the contract's own starts at 10)
        return contract.model_copy(update={"image_quality": _int(compression, "output_compression", 0, 100)})
    return contract


def _output_format(values: dict[str, str]) -> None:
    """OpenAI's `output_format` as SegSwap's `image_format`; SegSwap's own, sent alone, as it is (default png)."""
    if "output_format" not in values:
        return
    output_format = values.pop("output_format")
    if output_format not in OUTPUT_FORMATS:
        raise BadRequest(f"'output_format' must be png, jpeg or webp (got {output_format!r})", field="output_format")
    if values.setdefault("image_format", OUTPUT_FORMATS[output_format]) != OUTPUT_FORMATS[output_format]:
        raise BadRequest(
            f"'output_format' {output_format} and 'image_format' {values['image_format']} disagree; send one of them",
            field="output_format",
        )


def _model_set(values: dict[str, str]) -> None:
    """OpenAI's `model` as SegSwap's `model_set`; one of OpenAI's own names is the default set (no `model_set`)."""
    model = values.pop("model", "") or ""
    if not model or model.startswith(OPENAI_MODELS):
        return
    if values.setdefault("model_set", model) != model:
        raise BadRequest(
            f"'model' {model} and 'model_set' {values['model_set']} disagree; send one of them", field="model"
        )


def openai_mask(mask: Image.Image) -> Image.Image:
    """OpenAI's mask as SegSwap's: transparent = edit becomes white = edit; without alpha, white already is."""
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        alpha = np.asarray(mask.convert("RGBA").getchannel("A"))
        return Image.fromarray(np.where(alpha < 128, 255, 0).astype(np.uint8), "L")
    return mask


def _check_size(size: str, actual: tuple[int, int]) -> None:
    if size == "auto" or size == f"{actual[0]}x{actual[1]}":
        return
    raise BadRequest(
        f"'size' must be auto or the scene's own size, {actual[0]}x{actual[1]} (got {size!r})", field="size"
    )


def _answer(outputs: list[bytes], edit: EditRequest, contract: SwapRequest) -> dict:
    media = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}[contract.image_format]
    encoded = [base64.b64encode(data).decode("ascii") for data in outputs]
    if edit.response_format == "url":
        data = [{"url": f"data:{media};base64,{text}"} for text in encoded]
    else:
        data = [{"b64_json": text} for text in encoded]
    return {"created": int(time.time()), "data": data, "output_format": contract.image_format}


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high} (got {value!r})", field=name) from None
    if not low <= number <= high:
        raise BadRequest(f"'{name}' must be from {low} to {high} (got {number})", field=name)
    return number


def _not_a_file(name: str):
    raise BadRequest(f"'{name}' must be an uploaded image file", field=name)
