"""Fetching image URLs: the one function every URL input goes through.

Only http and https; the body is streamed and cut at a byte cap (Content-Length is
not trusted), and the whole fetch has a time cap. The SSRF rules (public addresses
only, pinned connections, redirects re-checked) build on this function.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx

from .errors import ApiError

MAX_REDIRECTS = 3


async def fetch_url(
    url: str,
    field: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allow: list[str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """GET `url` and return its body, or raise a 400 ApiError that names `field`.

    `allow`: hosts or CIDR networks the operator opened although they are not public.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ApiError(400, f"field '{field}': only http and https URLs can be fetched (got {scheme}:)")
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    owned = client is None
    client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=MAX_REDIRECTS)
    try:
        return await _read_capped(client, url, field, max_bytes, deadline=time.monotonic() + timeout_s)
    except httpx.TimeoutException:
        raise ApiError(400, f"field '{field}': fetching the URL took longer than {timeout_s:g} s") from None
    except httpx.TooManyRedirects:
        raise ApiError(400, f"field '{field}': the URL redirects more than {MAX_REDIRECTS} times") from None
    except httpx.HTTPError as exc:
        raise ApiError(400, f"field '{field}': the URL could not be fetched ({type(exc).__name__})") from None
    finally:
        if owned:
            await client.aclose()


async def _read_capped(client: httpx.AsyncClient, url: str, field: str, max_bytes: int, deadline: float) -> bytes:
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise ApiError(400, f"field '{field}': the URL answered HTTP {response.status_code}")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"field '{field}': the image at the URL is larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("total time cap")
            chunks.append(chunk)
        return b"".join(chunks)
