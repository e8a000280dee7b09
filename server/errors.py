"""HTTP errors: one exception type, one JSON shape, engine errors mapped to status codes here only."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pipelines.errors import EngineUnavailable, InvalidInput, SegswapError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200: a status code and one clear sentence for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def api_error_from_engine(exc: SegswapError) -> ApiError:
    if isinstance(exc, InvalidInput):
        return ApiError(400, exc.describe(f"field '{exc.field}'"))
    if isinstance(exc, EngineUnavailable):
        return ApiError(503, str(exc))
    return ApiError(500, "the engine failed on this request")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette's own Allow names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        messages = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
        message = messages.get(exc.status_code, str(exc.detail))
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {"Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid request: " + "; ".join(e.get("msg", "") for e in exc.errors()))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal error; the request id in x-request-id is in the server log")
