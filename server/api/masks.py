"""POST /v1/seg-mask: the region a box, points or words select, as a mask. Same keys, limits, credits and
errors as /v1/seg-swap; the selection itself is server/serving/selection.py."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from pipelines.masks import Selector
from server.api import metering
from server.api.body import read_swap_body
from server.api.contract import MaskRequest, MaskResponse
from server.api.deps import CallerDep, LifecycleDep, MetricsDep, SettingsDep
from server.api.openapi_docs import mask_responses, swap_request_body
from server.inputs.encode import encode_image
from server.inputs.resolve import resolve_images
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
    images = await resolve_images(parsed.image_sources(), settings)
    timings["inputs_s"] = round(time.perf_counter() - start, 4)
    metrics.stage_seconds.labels("inputs").observe(time.perf_counter() - start)
    charged = await metering.reserve(request, caller, settings.credit_cost)
    try:
        selected = await select_region(request, images["main_image"], body.selector(), deadline)
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


async def select_region(request: Request, image: Image.Image, selector: Selector, deadline: float) -> Selected:
    """The region a selector makes (server/serving/selection.py), timed in the metrics and the access log.
    Every route that takes a selector goes through here."""
    selected = await request.app.state.selection.select(image, selector, deadline)
    request.app.state.metrics.stage_seconds.labels("selection").observe(selected.seconds)
    request.state.log.update(selection_s=round(selected.seconds, 4), segmenter=selected.segmenter)
    return selected
