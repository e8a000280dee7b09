"""API keys: from SEGSWAP_API_KEYS (full access) and from a key file (TOML) that stores hashes only.

A key-file entry has an id (what logs and metrics show), the key's sha256, an optional
rate limit (requests per minute), an optional list of allowed endpoints, and a revoked
flag. Credit balances live in the credits ledger, not here. `segswap keys add|list|revoke`
edits the file; the server re-reads it when it changes, so a revocation takes effect
without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import tomllib
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from server.access import permissions
from server.errors import Unauthorized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRecord:
    id: str
    sha256: str
    rate_per_minute: int | None = None
    endpoints: tuple[str, ...] = ()  # empty: every endpoint
    revoked: bool = False
    created: str = ""


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id and its limits (env keys have none)."""

    key_id: str
    rate_per_minute: int | None = None
    endpoints: tuple[str, ...] = ()
    key_sha256: str = ""  # signs this caller's webhooks: the caller can compute it from its own key
    operator: bool = False  # the operator's own key (SEGSWAP_API_KEYS, or none on loopback): admin too

    def allows(self, path: str) -> bool:
        return permissions.allows(self.endpoints, path, self.operator)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def env_key_id(key: str) -> str:
    """A stable, non-secret name for a key from SEGSWAP_API_KEYS: never log the key itself."""
    return "env-" + digest(key)[:10]


@dataclass
class KeyFile:
    """The key file, re-read when its modification time changes."""

    path: Path
    _records: dict[str, KeyRecord] = field(default_factory=dict)
    _stamp: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def records(self) -> dict[str, KeyRecord]:
        """The keys as the file holds them now. A file edited into something unreadable keeps the keys last read
        (logged once): a typo must not turn every request into an error, nor open the server."""
        with self._lock:
            stamp = self.path.stat().st_mtime_ns if self.path.exists() else None
            if stamp != self._stamp:
                try:
                    self._records = read_key_file(self.path)
                except KeyFileError as exc:
                    if self._stamp is None:
                        raise
                    log.error("%s; the keys read before stay in use until it is fixed", exc)
                self._stamp = stamp
            return self._records


class KeyFileError(ValueError):
    """The key file cannot be read, or one of its entries is not a key: one sentence naming the file and entry."""


def read_key_file(path: Path) -> dict[str, KeyRecord]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"the key file {path} cannot be read: {exc}") from None
    records = {}
    for number, entry in enumerate(data.get("keys", []), 1):
        record = _record(entry, f"the key file {path}, key {number}")
        if record.id in records:  # the later would silently replace the earlier, and `keys add` drop it
            raise KeyFileError(f"the key file {path}, key {number}: the id {record.id!r} is taken by an earlier key")
        records[record.id] = record
        _warn_unknown_endpoints(record, path)
    return records


def _warn_unknown_endpoints(record: KeyRecord, path: Path) -> None:
    """An endpoint of no family allows nothing (a route since removed must not stop the server), but a typo
    should be seen: said in the log."""
    families = permissions.FAMILIES
    unknown = [each for each in record.endpoints if each not in families and not permissions.family_of(each)]
    if unknown:
        log.warning(
            "the key file %s, key %r: endpoints %s belong to no family (%s) and allow nothing",
            path,
            record.id,
            ", ".join(map(repr, unknown)),
            ", ".join(permissions.FAMILIES),
        )


def _record(entry: object, where: str) -> KeyRecord:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: a [[keys]] table is expected")
    unknown = set(entry) - {f.name for f in fields(KeyRecord)}
    if unknown or not isinstance(entry.get("id"), str) or not isinstance(entry.get("sha256"), str):
        allowed = ", ".join(f.name for f in fields(KeyRecord))
        raise KeyFileError(f"{where}: needs a text id and sha256, and no fields but {allowed} (unknown: {unknown})")
    rate = entry.get("rate_per_minute")
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
        raise KeyFileError(f"{where} ({entry['id']}): rate_per_minute must be a whole number of at least 1")
    endpoints = entry.get("endpoints", ())
    if not isinstance(endpoints, list | tuple) or not all(isinstance(each, str) for each in endpoints):
        raise KeyFileError(f"{where} ({entry['id']}): endpoints must be a list of endpoint families")
    if not isinstance(entry.get("revoked", False), bool):
        raise KeyFileError(f"{where} ({entry['id']}): revoked must be true or false")
    return KeyRecord(**{**entry, "endpoints": tuple(endpoints)})


def write_key_file(path: Path, records: dict[str, KeyRecord]) -> None:
    entries = []
    for record in records.values():
        entry = {k: v for k, v in asdict(record).items() if v is not None}
        entry["endpoints"] = list(record.endpoints)
        entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(tomli_w.dumps({"keys": entries}))
    os.chmod(temporary, 0o600)
    temporary.replace(path)


def identify(given: str, env_keys: list[str], key_file: KeyFile | None) -> Caller:
    """The caller behind `given`, comparing in constant time against every configured key."""
    given_digest = digest(given).encode()
    caller: Caller | None = None
    for key in env_keys:
        if hmac.compare_digest(given_digest, digest(key).encode()):
            caller = Caller(env_key_id(key), key_sha256=digest(key), operator=True)
    revoked = False
    for record in (key_file.records() if key_file else {}).values():
        if hmac.compare_digest(given_digest, record.sha256.encode()):
            if record.revoked:
                revoked = True
            elif caller is None:
                caller = Caller(record.id, record.rate_per_minute, record.endpoints, record.sha256)
    if caller is not None:
        return caller
    raise Unauthorized("API key revoked" if revoked else "invalid API key")


def add_key(path: Path, key_id: str, rate_per_minute: int | None, endpoints: tuple[str, ...]) -> str:
    """Create a key, store its hash, return the key (shown once). Endpoints are family names or their paths."""
    endpoints = tuple(dict.fromkeys(permissions.normalise(endpoint) for endpoint in endpoints))
    records = read_key_file(path)
    if key_id in records:
        raise ValueError(f"a key with id '{key_id}' exists already")
    secret = "ss-" + secrets.token_urlsafe(32)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    records[key_id] = KeyRecord(key_id, digest(secret), rate_per_minute, endpoints, False, created)
    write_key_file(path, records)
    return secret


def revoke_key(path: Path, key_id: str) -> None:
    records = read_key_file(path)
    if key_id not in records:
        raise ValueError(f"no key with id '{key_id}' in {path}")
    old = records[key_id]
    records[key_id] = KeyRecord(old.id, old.sha256, old.rate_per_minute, old.endpoints, True, old.created)
    write_key_file(path, records)
