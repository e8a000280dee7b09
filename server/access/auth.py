"""Who may call: API keys (constant-time checks), endpoint permissions and per-key rate limits."""

from __future__ import annotations

from dataclasses import dataclass

from server.access.keys import Caller, KeyFile, identify
from server.access.ratelimit import RateLimiter, retry_after_header
from server.errors import Forbidden, TooManyRequests, Unauthorized
from server.settings import Settings, is_loopback

QUERY_KEY_NAMES = ("x-api-key", "api_key", "apikey", "key")
ANONYMOUS = Caller("anonymous-loopback", operator=True)


@dataclass(frozen=True)
class Presented:
    """What a request shows of itself: its key, where it came in, and whether it put a key in the URL."""

    key: str | None
    path: str
    server_host: str | None  # the address the request reached this server on
    key_in_query: bool = False


def authenticate(presented: Presented, settings: Settings, key_file: KeyFile | None, limiter: RateLimiter) -> Caller:
    """The caller, or Unauthorized (no, unknown or revoked key), Forbidden (endpoint not allowed), TooManyRequests."""
    if presented.key_in_query:
        raise Unauthorized("send the API key in the x-api-key header, never in the URL")
    if not settings.auth_required:
        _allow_only_loopback(presented)
        return ANONYMOUS
    if not presented.key:
        raise Unauthorized("missing API key: send it in the x-api-key header (or Authorization: Bearer <key>)")
    caller = identify(presented.key, settings.api_keys, key_file)
    if not caller.allows(presented.path):
        raise Forbidden(f"this API key is not allowed to use {presented.path}")
    if caller.rate_per_minute:
        wait = limiter.take(caller.key_id, caller.rate_per_minute)
        if wait:
            raise TooManyRequests(
                f"rate limit of {caller.rate_per_minute} requests per minute reached for this key",
                {"Retry-After": retry_after_header(wait)},
            )
    return caller


def _allow_only_loopback(presented: Presented) -> None:
    """Without keys the server is only for this machine, even if started some other way."""
    if presented.server_host and not is_loopback(presented.server_host):
        raise Unauthorized("this server has no API keys configured and only answers on loopback")
