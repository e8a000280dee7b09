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


async def resolve_images(parsed: ParsedBody, settings: Settings) -> dict[str, Image.Image]:
    """Fetch the three images concurrently and decode them off the event loop."""

    async def load(field: str) -> Image.Image:
        data = parsed.uploads.get(field)
        if data is None:
            data = await image_bytes(getattr(parsed.request, field), field, settings)
        return await asyncio.to_thread(decode_image, data, field, settings.max_image_pixels)

    images = await asyncio.gather(*(load(field) for field in IMAGE_FIELDS))
    return dict(zip(IMAGE_FIELDS, images, strict=True))


async def resolve_job(parsed: ParsedBody, settings: Settings) -> SwapJob:
    """The request's images and parameters as a plain job, its seed resolved."""
    images = await resolve_images(parsed, settings)
    request = parsed.request
    params = request.model_dump(exclude={*IMAGE_FIELDS, "image_format", "image_quality", "base64"})
    params["seed"] = resolve_seed(request.seed)
    return SwapJob(main_image=images["main_image"].convert("RGB"), mask_image=images["mask_image"],
                   object_image=images["object_image"], **params)
