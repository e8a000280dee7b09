"""Fetching image URLs: the one function every URL input goes through, SSRF-safe.

For the first URL and for every redirect (at most MAX_REDIRECTS, followed by hand):
  1. only http and https, no user name or password in the URL;
  2. the host is resolved once (`resolve`, replaceable in tests) -- or read as an IP literal in any
     encoding inet_aton accepts -- and EVERY address must be public (`server.inputs.ssrf`), unless the host name
     or the address is in the operator's allow-list;
  3. the port must be 80 or 443, unless the host name or every address is in the allow-list;
  4. the request is sent to the checked address itself (the URL's host replaced by the IP), with the
     original Host header and, for https, the original host name as TLS SNI and certificate name (httpx's
     `sni_hostname` request extension). Nothing resolves the name a second time, so DNS rebinding cannot
     move the connection; each request asks for `Connection: close`, so no connection is reused across hops.
The body is streamed and cut at `max_bytes` (413; Content-Length is only trusted to refuse early), compressed
bodies are refused (no decompression bombs), and the whole fetch -- DNS, connects, redirects, body -- runs
under one deadline of `timeout_s`. Every refusal is a BadRequest (TooLarge past a cap), one sentence naming
the field.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_address

import httpx

from server.errors import BadRequest, TooLarge
from server.inputs.ssrf import AllowList, IPAddress, non_public_reason, parse_ip_literal

MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"http": 80, "https": 443}
OPEN_PORTS = frozenset({80, 443})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "segswap-fetch"

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the OS resolver gives for `host`, as strings, in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


# The resolver every fetch uses; tests replace this module attribute with a fake.
resolve: Resolver = system_resolve


@dataclass(frozen=True)
class Target:
    """A URL that passed the checks, and the addresses it may be fetched from."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host as in the URL, without brackets
    addresses: list[IPAddress]
    literal: bool  # the host is an IP literal


async def fetch_url(
    url: str,
    field: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allow: list[str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """GET `url` and return its body, or raise BadRequest (TooLarge when too large) naming `field`.

    `allow`: host names, addresses or CIDR networks the operator opened although they are not public;
    an allowed host may also use any port. `client`: an httpx client to send through (its redirect setting
    is overridden; its transport is what tests replace); by default a fresh one that ignores proxy variables.
    """
    owned = client is None
    if client is None:
        client = httpx.AsyncClient(
            verify=_ssl_context(),
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await _fetch(client, url, field, max_bytes, timeout_s, AllowList(allow or ()))
    except (TimeoutError, httpx.TimeoutException):
        raise BadRequest(f"field '{field}': fetching the URL took longer than {timeout_s:g} s") from None
    except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL, OSError) as exc:
        raise BadRequest(f"field '{field}': the URL could not be fetched ({type(exc).__name__})") from None
    finally:
        if owned:
            await client.aclose()


async def _fetch(
    client: httpx.AsyncClient, url: str, field: str, max_bytes: int, timeout_s: float, allow: AllowList
) -> bytes:
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
    what = "the URL"
    for _ in range(MAX_REDIRECTS + 1):
        target = await check_url(url, field, allow, what)
        response = await _open(client, target, timeout)
        try:
            status = response.status_code
            if status in REDIRECT_STATUSES:
                location = response.headers.get("location", "").strip()
                if not location:
                    raise BadRequest(f"field '{field}': {what} answered HTTP {status} without a Location")
                try:
                    url = str(target.url.join(location))
                except httpx.InvalidURL:
                    raise BadRequest(f"field '{field}': {what} redirects to an invalid URL") from None
                what = f"the redirect to {_short(url)}"
                continue
            if status != 200:
                raise BadRequest(f"field '{field}': {what} answered HTTP {status}")
            return await _read_capped(response, field, max_bytes)
        finally:
            await response.aclose()
    raise BadRequest(f"field '{field}': the URL redirects more than {MAX_REDIRECTS} times")


async def check_url(url: str, field: str, allow: AllowList, what: str = "the URL", kinds: str = "image URLs") -> Target:
    """Parse and check one URL (the first or a redirect's); resolve its host; BadRequest if refused. `kinds` names
    the URLs of its sort in the rule a refusal states ("image URLs must be public")."""

    def refuse(sentence: str) -> BadRequest:
        return BadRequest(f"field '{field}': {what} {sentence}")

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise refuse(f"is not a valid URL ({exc})") from None
    if parsed.scheme not in DEFAULT_PORTS:
        got = f"{parsed.scheme}:" if parsed.scheme else "no scheme"
        raise refuse(f"uses {got}; only http and https URLs can be fetched")
    if parsed.userinfo:
        raise refuse(f"contains a user name or password; {kinds} cannot")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise refuse("has no host")
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS[parsed.scheme]
    if not 1 <= port <= 65535:
        raise refuse(f"has an invalid port ({port})")

    host_allowed = allow.allows_host(host)
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        addresses = await _resolve(host, port, refuse)
    for ip in addresses:
        if host_allowed or allow.allows_address(ip):
            continue
        reason = non_public_reason(ip)
        if reason and literal is not None:  # the caller wrote the address: naming it tells them nothing new
            raise refuse(f"points to a non-public address ({ip}: {reason}); {kinds} must be public")
        if reason:  # what an internal name resolves to is not the caller's to learn
            raise refuse(f"resolves to a non-public address; {kinds} must be public")
    if port not in OPEN_PORTS and not (host_allowed or all(allow.allows_address(ip) for ip in addresses)):
        raise refuse(f"uses port {port}; {kinds} may use ports 80 and 443 only (or a host in the fetch allow-list)")
    return Target(url=parsed, host=host, addresses=addresses, literal=literal is not None)


async def _resolve(host: str, port: int, refuse: Callable[[str], BadRequest]) -> list[IPAddress]:
    try:
        answers = await resolve(host, port)
    except (OSError, UnicodeError):
        raise refuse(f"names a host that could not be resolved ({host})") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            ip = ip_address(answer)
        except ValueError:
            raise refuse(f"names a host that resolved to something other than an address ({host})") from None
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise refuse(f"names a host that could not be resolved ({host})")
    return addresses


async def post_pinned(
    url: str, field: str, content: bytes, headers: dict[str, str], *, timeout_s: float, allow: list[str] | None = None
) -> int:
    """POST a webhook's `content` to `url` under the same checks and pinning as fetches (no redirects followed); the
    status."""
    async with httpx.AsyncClient(
        verify=_ssl_context(), trust_env=False, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        async with asyncio.timeout(timeout_s):
            target = await check_url(url, field, AllowList(allow or ()), kinds="webhook URLs")
            timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
            response = await _open(client, target, timeout, "POST", content, headers)
            await response.aclose()
            return response.status_code


async def _open(
    client: httpx.AsyncClient,
    target: Target,
    timeout: httpx.Timeout,
    method: str = "GET",
    content: bytes | None = None,
    extra_headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send the request to each checked address in turn (the next only if connecting failed); never to the name."""
    headers = {
        "Host": target.url.netloc.decode("ascii"),
        "Accept-Encoding": "identity",
        "Connection": "close",
        "User-Agent": USER_AGENT,
        **(extra_headers or {}),
    }
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" and not target.literal else {}
    error: httpx.TransportError | None = None
    for ip in target.addresses:
        pinned = target.url.copy_with(host=str(ip), fragment=None)
        request = client.build_request(
            method, pinned, headers=headers, content=content, extensions=extensions, timeout=timeout
        )
        try:
            return await client.send(request, stream=True, follow_redirects=False, auth=None)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error = exc
    assert error is not None  # addresses is never empty
    raise error


async def _read_capped(response: httpx.Response, field: str, max_bytes: int) -> bytes:
    too_large = TooLarge(f"field '{field}': the image at the URL is larger than {max_bytes} bytes")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BadRequest(
            f"field '{field}': the URL answered with Content-Encoding {encoding}; images must be sent uncompressed"
        )
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large  # trusted only to refuse early; the count below is what holds
    chunks, size = [], 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for all fetches (certifi, or SSL_CERT_FILE / SSL_CERT_DIR when set)."""
    return httpx.create_ssl_context()


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 3] + "..."
