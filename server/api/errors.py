"""HTTP errors: the service's and the engine's errors mapped to status codes here only, in one JSON shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pipelines.errors import EngineUnavailable, InvalidInput, SegswapError
from server.contract import describe_error
from server.errors import (
    BadRequest,
    ClientGone,
    Conflict,
    Forbidden,
    InternalError,
    NotAcceptable,
    NotFound,
    RequestTimeout,
    ServiceError,
    TimedOut,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)


STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    NotAcceptable: 406,
    RequestTimeout: 408,
    Conflict: 409,
    TooLarge: 413,
    TooManyRequests: 429,
    InternalError: 500,
    Unavailable: 503,
    TimedOut: 504,
    ClientGone: 499,
}


def http_status(exc: ServiceError) -> int:
    return next((status for kind, status in STATUS.items() if isinstance(exc, kind)), 500)


OPENAI_ROUTES = "/v1/images/"  # OpenAI-compatible routes answer errors in OpenAI's shape


OPENAI_PARAMS = {"main_image": "image", "object_image": "image", "mask_image": "mask"}  # as OpenAI names them
OPENAI_NAMES = {  # how a message names them there: the route's own form fields
    "main_image": "the first image[] (the scene)",
    "object_image": "the second image[] (the object)",
    "mask_image": "mask",
}


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    field: str | None = None,
) -> JSONResponse:
    """`{"error": "..."}`; on the OpenAI-compatible routes `{"error": {"message", "type", "param", "code"}}`,
    which OpenAI's SDKs read (`param`: the field at fault, when the error names one)."""
    if request is not None and request.url.path.startswith(OPENAI_ROUTES):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        param = OPENAI_PARAMS.get(field, field) if field else None
        if field in OPENAI_NAMES:
            message = message.replace(f"field '{field}'", OPENAI_NAMES[field])
        body = {"error": {"message": message, "type": kind, "param": param, "code": str(status)}}
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def service_error_from_engine(exc: SegswapError) -> ServiceError:
    if isinstance(exc, InvalidInput):
        return BadRequest(exc.describe(f"field '{exc.field}'"), field=exc.field)
    if isinstance(exc, EngineUnavailable):
        return Unavailable(str(exc))
    return InternalError("the engine failed on this request")


REQUEST_PARTS = {"query": "query parameter", "header": "header", "path": "path parameter", "cookie": "cookie"}


def describe_request_error(err: dict) -> str:
    """A query parameter's, header's or path parameter's problem, named as the client sent it."""
    part, *name = err["loc"]
    if not name:
        return describe_error({**err, "loc": ()}, lambda _: f"the request {part}")
    kind = REQUEST_PARTS.get(part, "field")
    shown = "-".join(word.capitalize() for word in str(name[0]).split("-")) if part == "header" else name[0]
    return describe_error({**err, "loc": (shown, *name[1:])}, lambda named: f"{kind} '{named}'")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's own Allow names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(http_status(exc), exc.message, exc.headers, request, exc.field)

    @app.exception_handler(InvalidInput)
    async def _invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(400, exc.describe(f"field '{exc.field}'"), request=request, field=exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {
            404: f"no route {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }
        message = messages.get(exc.status_code, str(exc.detail))
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, message, headers, request)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        named = str(err["loc"][1]) if len(err["loc"]) > 1 else None
        return error_response(400, describe_request_error(err), request=request, field=named)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        # Starlette answers this one from outside the access middleware, which would add the request id.
        state = request.scope.get("state", {})
        headers = {"x-request-id": state["request_id"]} if state.get("request_id") else {}
        if state.get("remaining_credits") is not None:
            headers["x-remaining-credits"] = str(state["remaining_credits"])
        return error_response(
            500, "internal error; the request id in x-request-id is in the server log", headers, request
        )
