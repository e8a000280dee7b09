"""POST /v1/seg-swap, the synchronous contract. Thin: read, resolve, queue, encode; the rooms it calls do the work."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from pipelines import SegswapError, SwapJob, build_job
from server.api import metering
from server.api.body import read_swap_body
from server.api.deps import CallerDep, LifecycleDep, MetricsDep, SetsDep, SettingsDep
from server.api.errors import service_error_from_engine
from server.api.masks import select_region, selection_turn
from server.api.openapi_docs import swap_request_body, swap_responses
from server.contract import SwapResponse
from server.errors import ClientGone, TimedOut
from server.inputs.decode import decode_inputs
from server.inputs.encode import MEDIA_TYPES, check_encodable, encode_output
from server.inputs.metadata import input_digests, output_record
from server.inputs.resolve import fetch_inputs
from server.serving.admission import admit_to_set, queue_full_error, refuse_if_unavailable
from server.serving.metrics import Metrics
from server.serving.work_queue import Dropped, Outcome, QueueFull, Ticket, WorkQueue

router = APIRouter()
DISCONNECT_POLL_S = 0.2


@router.post(
    "/v1/seg-swap",
    summary="Swap an object into the masked region of an image",
    response_class=Response,
    responses=swap_responses(),
    openapi_extra=swap_request_body(),
)
async def seg_swap(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    sets: SetsDep,
    lifecycle: LifecycleDep,
    metrics: MetricsDep,
) -> Response:
    deadline = time.monotonic() + settings.request_timeout_s
    refuse_if_unavailable(lifecycle, sets)
    timings = request.state.log
    start = time.perf_counter()
    parsed = await read_swap_body(request, settings.max_body_bytes, settings.body_timeout_s)
    body = parsed.request
    served = await admit_to_set(sets, body.model_set)
    selector = body.selector()
    sent = await fetch_inputs(parsed.image_sources(), settings)

    charged = await metering.reserve(request, caller, settings.credit_cost)
    segmenter = None
    try:
        async with selection_turn(request, selector, deadline):  # a request that selects decodes in its turn
            images = await asyncio.to_thread(decode_inputs, sent, settings.max_image_pixels)
            check_encodable(images["main_image"].size, body.image_format)
            timings["inputs_s"] = _observe(metrics, "inputs", start)
            if selector is not None:  # the region given by a box, points or words instead of a mask
                selected = await select_region(request, images["main_image"], selector, deadline)
                images["mask_image"], segmenter = selected.mask, selected.segmenter
        del sent
        job = build_job(body.model_dump(), images)
        inputs = input_digests(images)
        del images
        outcome = await run_job(request, served.work, job, deadline, settings.request_timeout_s)
        start = time.perf_counter()
        record = output_record(settings.output_metadata, body.model_dump(), job.seed, outcome.engine, inputs)
        data = await asyncio.to_thread(
            encode_output, outcome.image, body.image_format, body.image_quality, record, settings
        )
    except BaseException:
        await metering.refund(request, caller, charged)
        raise
    timings["encode_s"] = _observe(metrics, "encode", start)
    metrics.queue_wait_seconds.observe(outcome.queue_s)
    metrics.stage_seconds.labels("engine").observe(outcome.engine_s)
    metrics.images.labels(outcome.engine).inc()
    timings.update(
        queue_s=round(outcome.queue_s, 4), engine_s=round(outcome.engine_s, 4), engine=outcome.engine, seed=job.seed
    )
    response = swap_response(data, body, job.seed, outcome)
    if segmenter is not None:
        response.headers["x-segswap-segmenter"] = segmenter
    return response


async def run_job(request: Request, work: WorkQueue, job: SwapJob, deadline: float, timeout_s: float) -> Outcome:
    """Queue the job and wait for it; 504 past the deadline, the job dropped if it has not started."""
    try:
        ticket = work.submit(job, deadline)
    except QueueFull as full:
        raise queue_full_error(full) from None
    watcher = asyncio.create_task(_drop_on_disconnect(request, work, ticket))
    failure: Exception | None = None
    try:
        return await asyncio.wait_for(asyncio.shield(ticket.future), timeout=max(0.0, deadline - time.monotonic()))
    except (TimeoutError, Dropped):
        work.cancel(ticket, "deadline passed")
        failure = TimedOut(f"the request did not finish within {timeout_s:g} s")
        if await request.is_disconnected():
            failure = ClientGone("the client closed the connection")
    except SegswapError as exc:
        failure = service_error_from_engine(exc)
        exc.__traceback__ = None  # it would point back at this frame, which holds the job: a cycle (see work_queue)
    finally:
        watcher.cancel()
        del ticket  # its future holds the engine's exception
    raise failure


async def _drop_on_disconnect(request: Request, work: WorkQueue, ticket: Ticket) -> None:
    while not ticket.future.done():
        if await request.is_disconnected():
            work.cancel(ticket, "client disconnected")
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def swap_response(data: bytes, body, seed: int, outcome: Outcome) -> Response:
    headers = {
        "x-seed-value": str(seed),
        "x-generation-time": f"{outcome.engine_s:.3f}",
        "x-segswap-engine": outcome.engine,
    }
    if body.base64:
        payload = SwapResponse(
            image=base64.b64encode(data).decode("ascii"),
            image_format=body.image_format,
            seed=seed,
            generation_time=round(outcome.engine_s, 3),
            engine=outcome.engine,
        )
        return JSONResponse(payload.model_dump(), headers=headers)
    return Response(data, media_type=MEDIA_TYPES[body.image_format], headers=headers)


def _observe(metrics: Metrics, stage: str, start: float) -> float:
    seconds = time.perf_counter() - start
    metrics.stage_seconds.labels(stage).observe(seconds)
    return round(seconds, 4)
