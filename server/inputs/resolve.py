"""Resolving a request's images: each field's bytes fetched or decoded from base64, concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from PIL import Image

from pipelines import InvalidInput
from server.inputs.decode import decode_base64_field, decode_inputs, is_url
from server.inputs.fetch import fetch_url
from server.inputs.files import UnreadableFile, read_file
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


def read_source(source: str, field: str, settings: Settings) -> bytes:
    """Offline use (CLI, batches): a URL fetched (SSRF-safe), else a regular file's bytes, at most as many as
    the server accepts in a body."""
    if is_url(source):
        return asyncio.run(image_bytes(source, field, settings))
    try:
        return read_file(source, settings.max_body_bytes)
    except UnreadableFile as exc:
        raise InvalidInput(str(exc), field) from None


async def fetch_inputs(sources: Mapping[str, str | bytes], settings: Settings) -> dict[str, bytes]:
    """Each field's bytes from its source: uploaded bytes as they are, a URL fetched, base64 decoded."""

    async def load(field: str, source: str | bytes) -> bytes:
        return source if isinstance(source, bytes) else await image_bytes(source, field, settings)

    data = await asyncio.gather(*(load(field, source) for field, source in sources.items()))
    return dict(zip(sources, data, strict=True))


async def resolve_images(sources: Mapping[str, str | bytes], settings: Settings) -> dict[str, Image.Image]:
    """Each field's image, fetched and decoded (off the event loop)."""
    data = await fetch_inputs(sources, settings)
    return await asyncio.to_thread(decode_inputs, data, settings.max_image_pixels)
