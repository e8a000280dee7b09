"""The HTTP routes. Thin: read, resolve, queue, encode; the work lives in the modules they call."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines import SegswapError, SwapJob

from .auth import authenticate
from .body import read_swap_body
from .contract import MEDIA_TYPES, SwapResponse
from .credits import CreditLedger
from .encode import encode_image
from .errors import ApiError, api_error_from_engine
from .inputs import resolve_job
from .keys import Caller
from .lifecycle import Lifecycle
from .metrics import Metrics
from .openapi_docs import swap_request_body, swap_responses
from .queue import Dropped, Outcome, QueueFull, Ticket, WorkQueue
from .settings import Settings

router = APIRouter()
DISCONNECT_POLL_S = 0.2


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_work(request: Request) -> WorkQueue:
    return request.app.state.work


def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> Caller:
    state = request.app.state
    caller = authenticate(request, settings, state.key_file, state.limiter)
    request.state.log["key_id"] = caller.key_id
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings)]
CallerDep = Annotated[Caller, Depends(require_api_key)]
WorkDep = Annotated[WorkQueue, Depends(get_work)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


@router.post(
    "/v1/seg-swap",
    summary="Swap an object into the masked region of an image",
    response_class=Response,
    responses=swap_responses(),
    openapi_extra=swap_request_body(),
)
async def seg_swap(
    request: Request, caller: CallerDep, settings: SettingsDep, work: WorkDep, lifecycle: LifecycleDep, metrics: MetricsDep
) -> Response:
    deadline = time.monotonic() + settings.request_timeout_s
    refuse_if_unavailable(lifecycle, work)
    timings = request.state.log
    start = time.perf_counter()
    parsed = await read_swap_body(request, settings.max_body_bytes)
    job = await resolve_job(parsed, settings)
    timings["inputs_s"] = _observe(metrics, "inputs", start)

    async with paid(request, caller, settings.credit_cost):
        outcome = await run_job(request, work, job, deadline, settings.request_timeout_s)
    metrics.queue_wait_seconds.observe(outcome.queue_s)
    metrics.stage_seconds.labels("engine").observe(outcome.engine_s)
    metrics.images.labels(outcome.engine).inc()
    timings.update(queue_s=round(outcome.queue_s, 4), engine_s=round(outcome.engine_s, 4), engine=outcome.engine, seed=job.seed)

    body = parsed.request
    start = time.perf_counter()
    data = await asyncio.to_thread(encode_image, outcome.image, body.image_format, body.image_quality)
    timings["encode_s"] = _observe(metrics, "encode", start)
    return swap_response(data, body, job.seed, outcome)


@asynccontextmanager
async def paid(request: Request, caller: Caller, cost: int) -> AsyncIterator[None]:
    """Reserve the image's cost for keys with a balance (406 if it is not covered); refund it on failure."""
    ledger: CreditLedger | None = request.app.state.credits
    balance = None if ledger is None or not cost else await asyncio.to_thread(ledger.balance, caller.key_id)
    if balance is None:
        yield
        return
    left = await asyncio.to_thread(ledger.reserve, caller.key_id, cost)
    if left is None:
        request.state.remaining_credits = balance
        raise ApiError(406, f"insufficient credits: this key has {balance}, an image costs {cost}")
    request.state.remaining_credits = left
    try:
        yield
    except BaseException:
        request.state.remaining_credits = await asyncio.to_thread(ledger.refund, caller.key_id, cost)
        raise


def refuse_if_unavailable(lifecycle: Lifecycle, work: WorkQueue, check_queue: bool = True) -> None:
    """503 while loading or draining, 429 when the queue is full: before any input is fetched."""
    reason = lifecycle.not_ready_reason()
    if reason:
        raise ApiError(503, reason, {"Retry-After": "5"})
    if not check_queue:
        return
    try:
        work.check_capacity()
    except QueueFull as full:
        raise queue_full_error(full) from None


def queue_full_error(full: QueueFull) -> ApiError:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + full.retry_after_s))
    headers = {"Retry-After": str(full.retry_after_s), "x-rate-limit-reset-at-utc": reset}
    return ApiError(429, f"the server is busy (queue full); retry in {full.retry_after_s} s", headers)


async def run_job(request: Request, work: WorkQueue, job: SwapJob, deadline: float, timeout_s: float) -> Outcome:
    """Queue the job and wait for it; 504 past the deadline, the job dropped if it has not started."""
    try:
        ticket = work.submit(job, deadline)
    except QueueFull as full:
        raise queue_full_error(full) from None
    watcher = asyncio.create_task(_drop_on_disconnect(request, work, ticket))
    try:
        return await asyncio.wait_for(asyncio.shield(ticket.future), timeout=max(0.0, deadline - time.monotonic()))
    except (TimeoutError, Dropped):
        work.cancel(ticket, "deadline passed")
        raise ApiError(504, f"the request did not finish within {timeout_s:g} s") from None
    except SegswapError as exc:
        raise api_error_from_engine(exc) from None
    finally:
        watcher.cancel()


async def _drop_on_disconnect(request: Request, work: WorkQueue, ticket: Ticket) -> None:
    while not ticket.future.done():
        if await request.is_disconnected():
            work.cancel(ticket, "client disconnected")
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def swap_response(data: bytes, body, seed: int, outcome: Outcome) -> Response:
    headers = {"x-seed-value": str(seed), "x-generation-time": f"{outcome.engine_s:.3f}", "x-segswap-engine": outcome.engine}
    if body.base64:
        payload = SwapResponse(
            image=base64.b64encode(data).decode("ascii"), image_format=body.image_format, seed=seed,
            generation_time=round(outcome.engine_s, 3), engine=outcome.engine,
        )
        return JSONResponse(payload.model_dump(), headers=headers)
    return Response(data, media_type=MEDIA_TYPES[body.image_format], headers=headers)


def _observe(metrics: Metrics, stage: str, start: float) -> float:
    seconds = time.perf_counter() - start
    metrics.stage_seconds.labels(stage).observe(seconds)
    return round(seconds, 4)


@router.get("/health/live", summary="The process is up")
async def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready", summary="Engine loaded and warm, not draining (503 otherwise)")
async def ready(lifecycle: LifecycleDep, work: WorkDep) -> JSONResponse:
    reason = lifecycle.not_ready_reason()
    if reason:
        return JSONResponse({"status": "not ready", "error": reason}, status_code=503)
    return JSONResponse({"status": "ready", "engine": lifecycle.engine_name, "workers": work.workers, "queue_depth": work.depth})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
