"""The asynchronous path (v2): submit, poll, fetch, cancel. Validation is v1's, at submit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import weakref
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from PIL import Image
from starlette.background import BackgroundTask

from pipelines import IMAGE_FIELDS, resolve_seed
from pipelines.imageops import mask_box, normalize_mask
from pipelines.job import check_object
from pipelines.masks import Selector
from server.access.keys import Caller
from server.api import metering
from server.api.body import ParsedBody, read_swap_body
from server.api.deps import CallerDep, JobsDep, LifecycleDep, SetsDep, SettingsDep
from server.api.job_events import event_stream
from server.api.masks import select_region, selection_turn
from server.api.openapi_docs import SWAP_HEADERS, swap_request_body
from server.contract import AsyncSwapRequest, ErrorResponse, JobResult, JobStatus, SubmitResponse
from server.errors import Conflict, NotFound, TooManyRequests
from server.inputs.decode import decode_inputs
from server.inputs.encode import check_encodable, encode_image
from server.inputs.fetch import check_url
from server.inputs.metadata import read as read_record
from server.inputs.resolve import fetch_inputs
from server.inputs.ssrf import AllowList
from server.jobs.dispatcher import media_type, status_body
from server.jobs.store import DuplicateSubmit, JobRecord, JobStore
from server.serving.admission import refuse_if_unavailable
from server.settings import Settings

router = APIRouter(prefix="/v2")
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 406, 409, 413, 429, 503)}
EVENTS_DOC = (
    "Server-Sent Events: `status` {request_id, status} on each change (QUEUED, PROCESSING, ...), `progress` "
    "{request_id, step, total} as the engine denoises, sampled (at most ten a second; the last step always comes) "
    "(with `?previews=1`, `preview` {request_id, step, image: a "
    "data: URL of a small JPEG} every few steps, from engines that make them), then `completed` (the status body "
    "and `output`, the image's "
    "URL), `failed` (with `error`) or `cancelled`, after which the stream ends; `: keep-alive` comments meanwhile. "
    "A key may hold SEGSWAP_MAX_STREAMS_PER_KEY streams open at once (16); beyond, 429."
)


@router.post(
    "/seg-swap",
    summary="Submit a swap; answers at once with where to poll",
    response_model=SubmitResponse,
    responses=ERRORS,
    openapi_extra=swap_request_body(AsyncSwapRequest),
)
async def submit(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    lifecycle: LifecycleDep,
    jobs: JobsDep,
    sets: SetsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    refuse_if_unavailable(lifecycle)
    if await asyncio.to_thread(jobs.store.count_pending) >= settings.max_pending_jobs:
        raise TooManyRequests(
            f"too many jobs pending ({settings.max_pending_jobs}); retry later", {"Retry-After": "30"}
        )
    parsed = await read_swap_body(request, settings.max_body_bytes, settings.body_timeout_s, AsyncSwapRequest)
    body: AsyncSwapRequest = parsed.request  # type: ignore[assignment]
    served = await sets.pick_async(body.model_set)
    served.check_lora(body.lora)  # a 400 now, not a failed job later
    model_set = served.name  # named in the job: it runs on that set even if the default changes
    if body.webhook_url:
        await check_url(
            body.webhook_url, "webhook_url", AllowList(settings.fetch_allow), "the webhook URL", "webhook URLs"
        )
    fingerprint = _fingerprint(parsed)
    if idempotency_key:
        existing = await asyncio.to_thread(jobs.store.find_idempotent, caller.key_id, idempotency_key)
        if existing is not None:
            return _replay(request, existing, fingerprint, settings)
    deadline = time.monotonic() + settings.request_timeout_s
    selector = body.selector()
    inputs = await fetch_inputs(parsed.image_sources(), settings)
    await _check_storage(jobs.store, caller, sum(len(data) for data in inputs.values()), settings)
    charged = await metering.reserve(request, caller, settings.credit_cost)
    params = _params(body, caller, charged) | {"model_set": model_set}
    try:
        async with selection_turn(request, selector, deadline):  # a request that selects decodes in its turn
            await _check_images(request, inputs, body, selector, deadline, settings)
        if selector is not None:  # the selected mask counts towards the key's stored bytes too
            await _check_storage(jobs.store, caller, sum(len(data) for data in inputs.values()), settings)
        record = await asyncio.to_thread(
            jobs.store.create,
            caller.key_id,
            params,
            inputs,
            settings.job_retention_s,
            idempotency_key,
            fingerprint,
            body.webhook_url,
            body.priority,
        )
    except DuplicateSubmit as duplicate:  # a concurrent submit with the same key won the race
        await metering.refund(request, caller, charged)
        return _replay(request, duplicate.existing, fingerprint, settings)
    except BaseException:
        await metering.refund(request, caller, charged)
        raise
    request.state.log["job_id"] = record.id
    jobs.wake()
    return JSONResponse(_submitted(request, record, settings).model_dump(), status_code=200)


@router.get(
    "/requests/{request_id}/status",
    summary="A job's status and timings",
    response_model=JobStatus,
    responses={**ERRORS, 422: {"model": JobStatus}},
)
async def job_status(request_id: str, caller: CallerDep, jobs: JobsDep) -> JSONResponse:
    record = await _owned(jobs.store, request_id, caller)
    return JSONResponse(status_body(record), status_code=422 if record.status == "FAILED" else 200)


@router.get(
    "/requests/{request_id}",
    summary="A job's full result",
    response_model=JobResult,
    responses={**ERRORS, 422: {"model": JobResult}},
)
async def job_result(
    request: Request, request_id: str, caller: CallerDep, jobs: JobsDep, settings: SettingsDep
) -> JSONResponse:
    record = await _owned(jobs.store, request_id, caller)
    result = status_body(record)
    if record.status == "COMPLETED":
        result["output"] = _absolute(request, settings, f"/v2/requests/{record.id}/output")
        result["seed"] = record.params["seed"]
        if record.params.get("base64"):
            data = await asyncio.to_thread(jobs.store.result_path(record).read_bytes)
            result["image"] = base64.b64encode(data).decode("ascii")
            if settings.delete_on_fetch:
                await asyncio.to_thread(jobs.store.forget, record.id)
    return JSONResponse(result, status_code=422 if record.status == "FAILED" else 200)


@router.get(
    "/requests/{request_id}/output",
    summary="The image of a completed job",
    response_class=Response,
    responses={
        **ERRORS,
        200: {
            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            "headers": {name: SWAP_HEADERS[name] for name in ("x-seed-value", "x-generation-time", "x-segswap-engine")},
        },
    },
)
async def job_output(request_id: str, caller: CallerDep, jobs: JobsDep, settings: SettingsDep) -> Response:
    record = await _owned(jobs.store, request_id, caller)
    if record.status != "COMPLETED":
        raise NotFound(f"request {request_id} has no output (status {record.status})")
    forget = BackgroundTask(jobs.store.forget, record.id) if settings.delete_on_fetch else None
    path = jobs.store.result_path(record)
    headers = {  # as v1 answers them; the engine is the one the image's own record names
        "x-seed-value": str(record.params["seed"]),
        "x-generation-time": f"{record.metrics['inference_time']:.3f}",
    }
    engine = await asyncio.to_thread(_recorded_engine, path)
    if engine:
        headers["x-segswap-engine"] = engine
    return FileResponse(path, media_type=media_type(record), headers=headers, background=forget)


def _recorded_engine(path) -> str | None:
    """The engine named in the output's record (read from its header, no pixels decoded), if it carries one."""
    try:
        with Image.open(path) as image:
            carried = read_record(image)
    except OSError:
        return None
    return carried.get("engine") if carried else None


@router.get(
    "/requests/{request_id}/events",
    summary="A job's progress as Server-Sent Events, until it ends",
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": EVENTS_DOC}},
)
async def job_events(
    request: Request,
    request_id: str,
    caller: CallerDep,
    jobs: JobsDep,
    settings: SettingsDep,
    previews: Annotated[bool, Query(description="also send a small JPEG preview every few steps")] = False,
) -> StreamingResponse:
    record = await _owned(jobs.store, request_id, caller)
    output = _absolute(request, settings, f"/v2/requests/{record.id}/output")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not hold the stream back
    release = jobs.watchers.admit(caller.key_id)  # 429 past the key's streams
    stream = event_stream(request, jobs, record.id, output, previews, release)
    weakref.finalize(stream, release)  # a stream whose client left before its first byte never runs its `finally`
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.delete(
    "/requests/{request_id}", summary="Cancel a job that has not started", response_model=JobStatus, responses=ERRORS
)
async def cancel(request_id: str, caller: CallerDep, jobs: JobsDep) -> JSONResponse:
    record = await _owned(jobs.store, request_id, caller)
    if not await asyncio.to_thread(jobs.cancel, record.id):
        raise Conflict(f"request {request_id} cannot be cancelled: it is {record.status}")
    return JSONResponse(status_body(await asyncio.to_thread(jobs.store.get, record.id)))


async def _owned(store: JobStore, request_id: str, caller: Caller) -> JobRecord:
    """The job if it exists, has not expired and belongs to the caller; else 404 (never 403: ids are not disclosed)."""
    record = await asyncio.to_thread(store.get, request_id)
    if record is None or record.key_id != caller.key_id or record.expires_at < time.time():
        raise NotFound(f"no request {request_id}")
    return record


async def _check_images(
    request: Request,
    inputs: dict[str, bytes],
    body: AsyncSwapRequest,
    selector: Selector | None,
    deadline: float,
    settings: Settings,
) -> None:
    """The images decoded and checked now (a 400 at submit, not a failed job later); a selected region is stored
    as the job's mask, in `inputs`: the job runs as if it had been painted."""
    images = await asyncio.to_thread(decode_inputs, inputs, settings.max_image_pixels)
    check_encodable(images["main_image"].size, body.image_format)
    if "mask_image" in images:  # an empty mask fails on every engine
        mask_box(normalize_mask(images["mask_image"], images["main_image"].size))
    if "object_image" in images:  # an erase sends none
        check_object(images["object_image"])
    if selector is not None:
        selected = await select_region(request, images["main_image"], selector, deadline)
        inputs["mask_image"] = await asyncio.to_thread(encode_image, selected.mask, "png", 95)


def _params(body: AsyncSwapRequest, caller: Caller, charged: int) -> dict:
    params = body.model_dump(exclude={*IMAGE_FIELDS, "webhook_url", "priority"})  # those two are the job's columns
    params["seed"] = resolve_seed(body.seed)
    params["_webhook_secret"] = caller.key_sha256
    params["_charged"] = charged  # refunded if the job fails, is cancelled or expires unrun
    return params


async def _check_storage(store: JobStore, caller: Caller, incoming: int, settings: Settings) -> None:
    """429 when this key already keeps as many jobs, or as many bytes, as a key may."""
    jobs, stored = await asyncio.to_thread(store.usage, caller.key_id)
    if jobs >= settings.max_stored_jobs_per_key:
        raise TooManyRequests(
            f"this key already has {jobs} stored jobs, the most a key may keep; each is deleted "
            f"{settings.job_retention_s:g} s after submission",
            {"Retry-After": "60"},
        )
    if stored + incoming > settings.max_stored_bytes_per_key:
        raise TooManyRequests(
            f"this key's stored jobs take {stored} bytes and this one {incoming} more, over the "
            f"{settings.max_stored_bytes_per_key} a key may keep; wait for older jobs to expire",
            {"Retry-After": "60"},
        )


def _fingerprint(parsed: ParsedBody) -> str:
    digest = hashlib.sha256(parsed.request.model_dump_json().encode())
    for name in sorted(parsed.uploads):
        digest.update(name.encode() + hashlib.sha256(parsed.uploads[name]).digest())
    return digest.hexdigest()


def _replay(request: Request, existing: JobRecord, fingerprint: str, settings: Settings) -> JSONResponse:
    if existing.body_hash != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different body")
    return JSONResponse(_submitted(request, existing, settings).model_dump(), headers={"idempotent-replayed": "true"})


def _submitted(request: Request, record: JobRecord, settings: Settings) -> SubmitResponse:
    return SubmitResponse(
        request_id=record.id,
        status=record.status,
        status_url=_absolute(request, settings, f"/v2/requests/{record.id}/status"),
        response_url=_absolute(request, settings, f"/v2/requests/{record.id}"),
    )


def _absolute(request: Request, settings: Settings, path: str) -> str:
    base = settings.public_base_url or str(request.base_url)
    return base.rstrip("/") + path
