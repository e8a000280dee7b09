"""Resolving a request's images: fetch or decode each one, concurrently, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from PIL import Image

from server.inputs.decode import decode_base64_field, decode_image, is_url
from server.inputs.fetch import fetch_url
from server.settings import Settings


async def image_bytes(value: str, field: str, settings: Settings) -> bytes:
    """The bytes behind a field's text: fetched when it is a URL, else decoded from base64."""
    if is_url(value):
        return await fetch_url(
            value,
            field,
            max_bytes=settings.fetch_max_bytes,
            timeout_s=settings.fetch_timeout_s,
            allow=settings.fetch_allow,
        )
    return decode_base64_field(value, field)


async def resolve_images(sources: Mapping[str, str | bytes], settings: Settings) -> dict[str, Image.Image]:
    """Each field's image from its source: uploaded bytes, a URL or base64 text."""

    async def load(field: str, source: str | bytes) -> Image.Image:
        data = source if isinstance(source, bytes) else await image_bytes(source, field, settings)
        return await asyncio.to_thread(decode_image, data, field, settings.max_image_pixels)

    images = await asyncio.gather(*(load(field, source) for field, source in sources.items()))
    return dict(zip(sources, images, strict=True))
