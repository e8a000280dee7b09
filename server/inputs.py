"""Resolving a validated request into a plain SwapJob: fetch or decode each image, resolve the seed."""

from __future__ import annotations

import asyncio

from PIL import Image

from pipelines import SwapJob, resolve_seed

from .body import ParsedBody
from .contract import IMAGE_FIELDS
from .fetch import fetch_url
from .images import decode_base64_field, decode_image, is_url
from .settings import Settings


async def image_bytes(value: str, field: str, settings: Settings) -> bytes:
    if is_url(value):
        return await fetch_url(
            value, field, max_bytes=settings.fetch_max_bytes, timeout_s=settings.fetch_timeout_s, allow=settings.fetch_allow
        )
    return decode_base64_field(value, field)


async def resolve_job(parsed: ParsedBody, settings: Settings) -> SwapJob:
    """Fetch the three images concurrently, decode them off the event loop, build the job."""
    request = parsed.request

    async def load(field: str) -> Image.Image:
        data = parsed.uploads.get(field)
        if data is None:
            data = await image_bytes(getattr(request, field), field, settings)
        return await asyncio.to_thread(decode_image, data, field, settings.max_image_pixels)

    main, mask, obj = await asyncio.gather(*(load(field) for field in IMAGE_FIELDS))
    params = request.model_dump(exclude={*IMAGE_FIELDS, "image_format", "image_quality", "base64"})
    params["seed"] = resolve_seed(request.seed)
    return SwapJob(main_image=main.convert("RGB"), mask_image=mask, object_image=obj, **params)
