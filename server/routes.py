"""The HTTP routes. Thin: read, resolve, run, encode; the work lives in the modules they call."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from pipelines import SegswapError

from .auth import check_api_key
from .body import read_swap_body
from .contract import MEDIA_TYPES, SwapResponse
from .encode import encode_image
from .errors import api_error_from_engine
from .inputs import resolve_job
from .openapi_docs import swap_request_body, swap_responses
from .settings import Settings
from .worker import EngineRunner

router = APIRouter()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runner(request: Request) -> EngineRunner:
    return request.app.state.runner


def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    check_api_key(request, settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RunnerDep = Annotated[EngineRunner, Depends(get_runner)]


@router.post(
    "/v1/seg-swap",
    summary="Swap an object into the masked region of an image",
    response_class=Response,
    responses=swap_responses(),
    openapi_extra=swap_request_body(),
    dependencies=[Depends(require_api_key)],
)
async def seg_swap(request: Request, settings: SettingsDep, runner: RunnerDep) -> Response:
    parsed = await read_swap_body(request, settings.max_body_bytes)
    job = await resolve_job(parsed, settings)
    try:
        image, seconds = await runner.run(job)
    except SegswapError as exc:
        raise api_error_from_engine(exc) from None
    body = parsed.request
    data = await asyncio.to_thread(encode_image, image, body.image_format, body.image_quality)
    headers = {
        "x-seed-value": str(job.seed),
        "x-generation-time": f"{seconds:.3f}",
        "x-segswap-engine": runner.engine.name,
    }
    if body.base64:
        payload = SwapResponse(
            image=base64.b64encode(data).decode("ascii"),
            image_format=body.image_format,
            seed=job.seed,
            generation_time=round(seconds, 3),
            engine=runner.engine.name,
        )
        return JSONResponse(payload.model_dump(), headers=headers)
    return Response(data, media_type=MEDIA_TYPES[body.image_format], headers=headers)
