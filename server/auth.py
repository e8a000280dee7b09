"""API keys: the `x-api-key` header checked in constant time against the configured keys."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from .errors import ApiError
from .settings import Settings, is_loopback

QUERY_KEY_NAMES = ("x-api-key", "api_key", "apikey", "key")


def _digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of key lengths.
    return hashlib.sha256(key.encode()).digest()


def key_matches(given: str, keys: list[str]) -> bool:
    """True if `given` is one of `keys`; every key is compared, whichever matches."""
    given_digest = _digest(given)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given_digest, _digest(key))
    return matched


def key_id(key: str) -> str:
    """A stable, non-secret name for a key, for logs: never log the key itself."""
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def check_api_key(request: Request, settings: Settings) -> str:
    """The caller's key id; raises a 401 ApiError unless the request may use the API."""
    if any(name in request.query_params for name in QUERY_KEY_NAMES):
        raise ApiError(401, "send the API key in the x-api-key header, never in the URL")
    if not settings.auth_required:
        _allow_only_loopback(request)
        return "anonymous-loopback"
    given = request.headers.get("x-api-key")
    if not given:
        raise ApiError(401, "missing API key: send it in the x-api-key header")
    if not key_matches(given, settings.api_keys):
        raise ApiError(401, "invalid API key")
    return key_id(given)


def _allow_only_loopback(request: Request) -> None:
    """Without keys the server is only for this machine, even if started some other way."""
    local = request.scope.get("server")
    if local and not is_loopback(str(local[0])):
        raise ApiError(401, "this server has no API keys configured and only answers on loopback")
