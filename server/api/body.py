"""Reading the request body: size cap, content type, JSON or multipart, then the contract."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from pipelines import IMAGE_FIELDS
from server.contract import SwapRequest, describe_validation_error
from server.errors import BadRequest, ClientGone, NotAcceptable, RequestTimeout, TooLarge
from server.inputs.json_object import parse_json_object

UPLOADED = "(uploaded file)"


@dataclass
class ParsedBody:
    request: BaseModel  # the route's contract: SwapRequest, AsyncSwapRequest, MaskRequest
    uploads: dict[str, bytes] = field(default_factory=dict)
    """Image fields sent as multipart files; their value in `request` is a placeholder."""

    def image_sources(self) -> dict[str, str | bytes]:
        """Each image field sent: an uploaded file's bytes, else the URL or base64 text."""
        sent = [name for name in IMAGE_FIELDS if getattr(self.request, name, None) is not None]
        return {name: self.uploads.get(name, getattr(self.request, name)) for name in sent}


async def read_swap_body(
    request: Request, max_bytes: int, timeout_s: float, model: type[BaseModel] = SwapRequest
) -> ParsedBody:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "multipart/form-data"):
        raise NotAcceptable("send the body as application/json or multipart/form-data")
    body = await read_body(request, max_bytes, timeout_s)
    if content_type == "application/json":
        return ParsedBody(_validate(model, parse_json_object(body), strict=True))
    return await _parse_multipart(request, body, max_bytes, model)


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, at most `max_bytes` (413), arriving within `timeout_s` (408)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_capped(request, max_bytes)
    except TimeoutError:  # a slow client: answered, then disconnected
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s", {"Connection": "close"}
        ) from None
    except ClientDisconnect:  # it left before its body was in: nothing to answer, a 499 in the log
        raise ClientGone("the client closed the connection before its body arrived") from None


async def read_form(request: Request, body: bytes, max_bytes: int, max_files: int) -> list[tuple[str, str | bytes]]:
    """A multipart body's fields in order: text values as str, uploaded files as their bytes."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_part_size=max_bytes)
    except MultiPartException as exc:
        raise BadRequest(f"the multipart body cannot be read: {exc.message}") from None
    _require_closing_boundary(request, body)
    return [
        (name, await value.read() if isinstance(value, UploadFile) else value) for name, value in form.multi_items()
    ]


def _require_closing_boundary(request: Request, body: bytes) -> None:
    """The parser reads a body cut short as the parts it got (none, or the first ones, the last one truncated):
    a complete body ends with its closing boundary."""
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in body:
        raise BadRequest("the multipart body is incomplete: it ends before its closing boundary (was it cut short?)")


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"the request body is larger than {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"the request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes, max_bytes: int, model: type[BaseModel]) -> ParsedBody:
    data: dict[str, str] = {}
    uploads: dict[str, bytes] = {}
    for name, value in await read_form(request, body, max_bytes, len(IMAGE_FIELDS)):
        if name in data:
            raise BadRequest(f"field '{name}': sent twice (as a file and a value, or two values); send it once")
        if isinstance(value, bytes):
            _require_image_field(name, model)
            uploads[name] = value
            data[name] = UPLOADED
        else:
            data[name] = value
    return ParsedBody(_validate(model, data, strict=False), uploads)


def _require_image_field(name: str, model: type[BaseModel]) -> None:
    """An uploaded file goes in one of the route's image fields; anything else is named, with those fields."""
    images = [field for field in IMAGE_FIELDS if field in model.model_fields]
    if name in images:
        return
    listed = ", ".join(images)
    if name not in model.model_fields:
        raise BadRequest(f"unknown field '{name}' (uploaded files go in the image fields: {listed})")
    raise BadRequest(f"field '{name}': only the image fields ({listed}) can be uploaded files; send it as a value")


def _validate(model: type[BaseModel], data: dict, *, strict: bool) -> BaseModel:
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from None
