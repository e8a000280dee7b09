"""What the OpenAPI schema says about /v1/seg-swap and /v1/seg-mask that FastAPI cannot infer.

The route reads its body itself (JSON or multipart, with the contract's own error
messages), so the request body and the image responses are described here.
"""

from __future__ import annotations

from pydantic import BaseModel

from pipelines import IMAGE_FIELDS
from server.contract import ErrorResponse, MaskResponse, SwapRequest, SwapResponse
from server.inputs.encode import MEDIA_TYPES


def _multipart_schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    schema["title"] = model.__name__.removesuffix("Request") + "RequestForm"
    for name in IMAGE_FIELDS:
        if name not in schema["properties"]:
            continue
        text = schema["properties"][name]
        # Plain string: an uploaded file part is a string too in OpenAPI 3.1, and `format: binary`
        # inside anyOf trips schema-driven clients and fuzzers.
        schema["properties"][name] = {
            "description": text["description"] + " In multipart bodies it may also be an uploaded file.",
            "type": "string",
            "minLength": 1,
        }
    for name in ("box", "points"):  # a form sends arrays as JSON text
        schema["properties"][name] = {
            "description": schema["properties"][name]["description"] + " In multipart bodies: as JSON text.",
            "type": "string",
        }
    return schema


def swap_request_body(model: type[BaseModel] = SwapRequest) -> dict:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {"schema": _multipart_schema(model)},
            },
        }
    }


SWAP_HEADERS = {
    "x-request-id": {
        "description": "Request id (yours from x-request-id, or generated).",
        "schema": {"type": "string"},
    },
    "x-seed-value": {"description": "The seed used.", "schema": {"type": "integer"}},
    "x-generation-time": {"description": "Seconds the engine spent on the image.", "schema": {"type": "number"}},
    "x-segswap-engine": {"description": "The engine that made the image.", "schema": {"type": "string"}},
}

ERRORS = {
    400: "Invalid parameter, unknown field or unreadable image.",
    401: "Missing or invalid API key.",
    406: "Content type other than application/json or multipart/form-data.",
    413: "Body or image too large.",
    429: "Queue full: retry after `Retry-After` seconds.",
    500: "Internal error.",
    503: "Engine loading or server shutting down.",
    504: "The request did not finish before its deadline.",
}


def swap_responses() -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    responses: dict = {
        200: {
            "description": "The image (raw bytes), or JSON with the base64 image when `base64` is true.",
            "model": SwapResponse,
            "headers": SWAP_HEADERS,
            "content": {media_type: binary for media_type in MEDIA_TYPES.values()},
        }
    }
    for status, text in ERRORS.items():
        responses[status] = {"description": text, "model": ErrorResponse}
    return responses


def mask_responses() -> dict:
    responses: dict = {
        200: {
            "description": "The mask as PNG (white = selected, the main image's size), or JSON with it as base64 "
            "when `base64` is true.",
            "model": MaskResponse,
            "headers": {
                "x-request-id": SWAP_HEADERS["x-request-id"],
                "x-segswap-segmenter": {
                    "description": "What selected: grabcut, sam2, sam2+owlv2.",
                    "schema": {"type": "string"},
                },
            },
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        }
    }
    for status, text in ERRORS.items():
        if status not in (429, 504):
            responses[status] = {"description": text, "model": ErrorResponse}
    return responses
