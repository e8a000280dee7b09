"""POST /v1/seg-mask: the region a box, points or words select, as a mask. Same keys, limits, credits and
errors as /v1/seg-swap; the selection itself is server/serving/selection.py.

Selecting is paid work, so every route that selects does it in this order: the key, its permissions and its rate
limit (the CallerDep, before the body is read); the route's own caps (v2: stored jobs); the credits
(metering.reserve); only then `selection_turn`, which refuses to start before the credits are reserved, and in
it the images are decoded and `select_region` selects. A key that is refused never decodes, waits or selects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from pipelines.masks import Selector
from server.api import metering
from server.api.body import read_swap_body
from server.api.deps import CallerDep, LifecycleDep, MetricsDep, SettingsDep
from server.api.openapi_docs import mask_responses, swap_request_body
from server.contract import MaskRequest, MaskResponse
from server.inputs.decode import decode_inputs
from server.inputs.encode import encode_image
from server.inputs.resolve import fetch_inputs
from server.serving.admission import refuse_if_draining
from server.serving.selection import Selected

router = APIRouter()


@router.post(
    "/v1/seg-mask",
    summary="Select a region by a box, points or words: the mask to swap into",
    response_class=Response,
    responses=mask_responses(),
    openapi_extra=swap_request_body(MaskRequest),
)
async def seg_mask(
    request: Request, caller: CallerDep, settings: SettingsDep, lifecycle: LifecycleDep, metrics: MetricsDep
) -> Response:
    refuse_if_draining(lifecycle)
    deadline = time.monotonic() + settings.request_timeout_s
    timings = request.state.log
    start = time.perf_counter()
    parsed = await read_swap_body(request, settings.max_body_bytes, settings.body_timeout_s, MaskRequest)
    body: MaskRequest = parsed.request
    selector = body.selector()
    sent = await fetch_inputs(parsed.image_sources(), settings)
    inputs_s = time.perf_counter() - start
    charged = await metering.reserve(request, caller, settings.credit_cost)
    try:
        async with selection_turn(request, selector, deadline):
            start = time.perf_counter()
            image = (await asyncio.to_thread(decode_inputs, sent, settings.max_image_pixels))["main_image"]
            inputs_s += time.perf_counter() - start  # fetched and decoded, not the wait for the turn between
            timings["inputs_s"] = round(inputs_s, 4)
            metrics.stage_seconds.labels("inputs").observe(inputs_s)
            selected = await select_region(request, image, selector, deadline)
            del image
        data = await asyncio.to_thread(encode_image, selected.mask, "png", 95)
    except BaseException:
        await metering.refund(request, caller, charged)
        raise
    metrics.images.labels(f"mask/{selected.segmenter}").inc()
    headers = {"x-segswap-segmenter": selected.segmenter}
    if body.base64:
        share = float(np.asarray(selected.mask).mean() / 255.0)
        payload = MaskResponse(
            mask=base64.b64encode(data).decode("ascii"),
            segmenter=selected.segmenter,
            selected_share=round(share, 4),
            selection_time=round(selected.seconds, 3),
        )
        return JSONResponse(payload.model_dump(), headers=headers)
    return Response(data, media_type="image/png", headers=headers)


def selection_turn(
    request: Request, selector: Selector | None, deadline: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """The request's turn to decode its images and select (SelectionService.turn: a 429 at once when too many wait,
    before anything is decoded); nothing to wait for when the request selects nothing. Only once the request's
    credits are reserved (the order is in this module's docstring)."""
    if selector is None:
        return contextlib.nullcontext()
    if not getattr(request.state, "metered", False):
        raise RuntimeError("a selection may only start once the request's credits are reserved (metering.reserve)")
    return request.app.state.selection.turn(deadline)


async def select_region(request: Request, image: Image.Image, selector: Selector, deadline: float) -> Selected:
    """The region a selector makes (server/serving/selection.py), timed in the metrics and the access log.
    Every route that takes a selector goes through here, in its `selection_turn`."""
    selected = await request.app.state.selection.select(image, selector, deadline)
    request.app.state.metrics.stage_seconds.labels("selection").observe(selected.seconds)
    request.state.log.update(selection_s=round(selected.seconds, 4), segmenter=selected.segmenter)
    return selected
