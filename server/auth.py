"""Who may call: API keys (constant-time checks), endpoint permissions and per-key rate limits."""

from __future__ import annotations

from fastapi import Request

from .errors import ApiError
from .keys import Caller, KeyError401, KeyFile, identify
from .ratelimit import RateLimiter, retry_after_header
from .settings import Settings, is_loopback

QUERY_KEY_NAMES = ("x-api-key", "api_key", "apikey", "key")
ANONYMOUS = Caller("anonymous-loopback")


def authenticate(request: Request, settings: Settings, key_file: KeyFile | None, limiter: RateLimiter) -> Caller:
    """The caller, or an ApiError: 401 (no, unknown or revoked key), 403 (endpoint not allowed), 429 (rate)."""
    if any(name in request.query_params for name in QUERY_KEY_NAMES):
        raise ApiError(401, "send the API key in the x-api-key header, never in the URL")
    if not settings.auth_required:
        _allow_only_loopback(request)
        return ANONYMOUS
    given = request.headers.get("x-api-key")
    if not given:
        raise ApiError(401, "missing API key: send it in the x-api-key header")
    try:
        caller = identify(given, settings.api_keys, key_file)
    except KeyError401 as exc:
        raise ApiError(401, str(exc)) from None
    if not caller.allows(request.url.path):
        raise ApiError(403, f"this API key is not allowed to use {request.url.path}")
    if caller.rate_per_minute:
        wait = limiter.take(caller.key_id, caller.rate_per_minute)
        if wait:
            raise ApiError(429, f"rate limit of {caller.rate_per_minute} requests per minute reached for this key",
                           {"Retry-After": retry_after_header(wait)})
    return caller


def _allow_only_loopback(request: Request) -> None:
    """Without keys the server is only for this machine, even if started some other way."""
    local = request.scope.get("server")
    if local and not is_loopback(str(local[0])):
        raise ApiError(401, "this server has no API keys configured and only answers on loopback")
