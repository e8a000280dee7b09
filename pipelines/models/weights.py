"""Model weights: the pinned manifest, resumable download, and verification.

A model set (``sdxl``, ``sd15``, ...) is a list of files, each pinned to a Hub
repo revision and copied to a fixed place under ``<weights_dir>/<set>/``.

The downloader is plain httpx rather than huggingface_hub on purpose: we want
our own layout under one folder (not the hub cache), sha256 checks against a
pinned manifest, and a plain resumable GET that a loopback fake of the hub can
serve in tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

import httpx

from pipelines import paths
from pipelines.errors import WeightsError
from pipelines.models.few_step import LORA_ARCH
from pipelines.models.model_sets import ARCHS, MASK_SETS

DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifest.toml"  # package data
DEFAULT_ENDPOINT = "https://huggingface.co"
LOCK_NAME = ".segswap-lock.json"
SCHEMA = 1
CHUNK = 1 << 20

FILE_FIELDS = ("repo", "revision", "path", "dest", "size", "sha256")
_REPO_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_REVISION_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[str, int, "int | None"], None]
"""progress(dest, bytes_done, bytes_total); bytes_total is None when unknown."""


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One pinned file; size 0 and sha256 "" mean unknown, revision "" means main."""

    repo: str
    revision: str
    path: str
    dest: str
    size: int
    sha256: str

    def url(self, endpoint: str) -> str:
        revision = self.revision or "main"
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{revision}/{quote(self.path, safe='/')}"


@dataclass(frozen=True)
class ManifestSet:
    name: str
    description: str
    arch: str
    license: str
    files: tuple[FileSpec, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the known sizes (a lower bound when some sizes are unknown)."""
        return sum(spec.size for spec in self.files)


@dataclass(frozen=True)
class Manifest:
    path: Path
    sets: dict[str, ManifestSet]

    def get(self, name: str) -> ManifestSet:
        try:
            return self.sets[name]
        except KeyError:
            known = ", ".join(self.sets)
            raise WeightsError(f"unknown model set '{name}'; the manifest names: {known}") from None


@dataclass(frozen=True)
class SetSummary:
    """One row of ``segswap weights list``."""

    name: str
    arch: str
    description: str
    license: str
    total_bytes: int
    file_count: int


def load_manifest(path: Path | str | None = None) -> Manifest:
    """Read and validate a manifest (default: the shipped pipelines/models/manifest.toml)."""
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    data = _read_toml(path)
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise WeightsError(f"weights manifest {path} has schema {schema!r}; this segswap reads schema {SCHEMA}")
    raw_sets = data.get("sets")
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise WeightsError(f"weights manifest {path} names no model sets ([sets.<name>] tables)")
    sets = {name: _parse_set(f"weights manifest {path}: set '{name}'", name, raw) for name, raw in raw_sets.items()}
    return Manifest(path=path, sets=sets)


def list_sets(manifest: Manifest) -> list[SetSummary]:
    return [
        SetSummary(entry.name, entry.arch, entry.description, entry.license, entry.total_bytes, len(entry.files))
        for entry in manifest.sets.values()
    ]


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise WeightsError(f"weights manifest not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WeightsError(f"weights manifest {path} is not valid TOML: {exc}") from None


def _parse_set(where: str, name: str, raw: object) -> ManifestSet:
    if not isinstance(raw, dict):
        raise WeightsError(f"{where} must be a table")
    description, arch, raw_files = raw.get("description"), raw.get("arch"), raw.get("files")
    license_ = raw.get("license")
    if not isinstance(description, str) or not description:
        raise WeightsError(f"{where} needs a description string")
    if not isinstance(license_, str) or not license_:
        raise WeightsError(f"{where} needs a license string (the licences of its weights)")
    known = (*ARCHS, *MASK_SETS, LORA_ARCH)
    if arch not in known:
        raise WeightsError(f"{where} has arch {arch!r}; expected one of {', '.join(known)}")
    if not isinstance(raw_files, list) or not raw_files:
        raise WeightsError(f"{where} lists no files ([[sets.{name}.files]])")
    files = tuple(_parse_file(f"{where} file {i}", item) for i, item in enumerate(raw_files, 1))
    _reject_duplicate_dests(where, files)
    return ManifestSet(name=name, description=description, arch=arch, license=license_, files=files)


def _parse_file(where: str, raw: object) -> FileSpec:
    if not isinstance(raw, dict):
        raise WeightsError(f"{where} must be a table")
    if isinstance(raw.get("dest"), str):
        where = f"{where} ({raw['dest']})"
    missing = [key for key in FILE_FIELDS if key not in raw]
    unknown = sorted(set(raw) - set(FILE_FIELDS))
    if missing:
        raise WeightsError(f"{where} is missing {', '.join(missing)}")
    if unknown:
        raise WeightsError(f"{where} has unknown field(s) {', '.join(unknown)}")
    spec = FileSpec(**raw)
    problem = _file_problem(spec)
    if problem:
        raise WeightsError(f"{where}: {problem}")
    return spec


def _file_problem(spec: FileSpec) -> str | None:
    """The first thing wrong with one file entry, or None."""
    texts = (spec.repo, spec.revision, spec.path, spec.dest, spec.sha256)
    if not all(isinstance(value, str) for value in texts):
        return "repo, revision, path, dest and sha256 must be strings"
    if not isinstance(spec.size, int) or isinstance(spec.size, bool) or spec.size < 0:
        return "size must be a whole number of bytes (0 when unknown)"
    if not _REPO_RE.fullmatch(spec.repo):
        return f"repo {spec.repo!r} is not of the form owner/name"
    if spec.revision and not _REVISION_RE.fullmatch(spec.revision):
        return "revision must be a 40-hex commit id (or empty when unknown)"
    if spec.sha256 and not _SHA256_RE.fullmatch(spec.sha256):
        return "sha256 must be 64 lowercase hex digits (or empty when unknown)"
    if not spec.path or spec.path.startswith("/"):
        return "path must be a path inside the repo"
    if not _is_safe_dest(spec.dest):
        return f"dest must be a relative path inside the set folder, not {LOCK_NAME} or a .part file"
    return None


def _is_safe_dest(dest: str) -> bool:
    parts = dest.split("/")
    return (
        bool(dest)
        and "\\" not in dest
        and not dest.startswith("/")
        and all(part not in ("", ".", "..") for part in parts)
        and dest != LOCK_NAME
        and not dest.endswith(".part")
    )


def _reject_duplicate_dests(where: str, files: tuple[FileSpec, ...]) -> None:
    seen: set[str] = set()
    for spec in files:
        if spec.dest in seen:
            raise WeightsError(f"{where} names dest {spec.dest} twice")
        seen.add(spec.dest)


# --------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------


def resolve_weights_dir(weights_dir: Path | str | None = None) -> Path:
    """Explicit argument, else the default (pipelines.paths: $SEGSWAP_WEIGHTS_DIR, else the data directory's)."""
    return Path(weights_dir).expanduser() if weights_dir else paths.weights_dir()


def resolve_endpoint(endpoint: str | None = None) -> str:
    """Explicit argument, else $SEGSWAP_HF_ENDPOINT, else $HF_ENDPOINT, else huggingface.co."""
    chosen = endpoint or os.environ.get("SEGSWAP_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT")
    return (chosen or DEFAULT_ENDPOINT).rstrip("/")


def set_dir(weights_dir: Path | str | None, name: str) -> Path:
    return resolve_weights_dir(weights_dir) / name


# --------------------------------------------------------------------------
# Lock file: sha256 observed on download, for files the manifest cannot pin
# --------------------------------------------------------------------------


def _read_lock(folder: Path) -> dict[str, dict]:
    path = folder / LOCK_NAME
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError
        return files
    except (ValueError, KeyError, TypeError):
        raise WeightsError(f"lock file {path} is corrupt; delete it and run the download again") from None


def _record_lock(folder: Path, spec: FileSpec, sha256: str, size: int, commit: str | None) -> None:
    files = _read_lock(folder)
    files[spec.dest] = {
        "repo": spec.repo,
        "revision": spec.revision,
        "path": spec.path,
        "size": size,
        "sha256": sha256,
        "commit": commit,
    }
    path = folder / LOCK_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _expected_sha256(spec: FileSpec, lock: dict[str, dict]) -> tuple[str, str]:
    """(sha256, where it comes from: "manifest", "lock" or "")."""
    if spec.sha256:
        return spec.sha256, "manifest"
    entry = lock.get(spec.dest) or {}
    # A lock entry only counts for the exact repo/revision/path it was observed from.
    if (entry.get("repo"), entry.get("revision"), entry.get("path")) == (spec.repo, spec.revision, spec.path):
        return str(entry.get("sha256") or ""), "lock"
    return "", ""


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------


class Status(StrEnum):
    OK = "ok"
    MISSING = "missing"
    SIZE_MISMATCH = "size mismatch"
    SHA256_MISMATCH = "sha256 mismatch"
    UNVERIFIABLE = "unverifiable"


@dataclass(frozen=True)
class FileCheck:
    dest: str
    status: Status
    expected_size: int  # 0: unknown
    actual_size: int | None  # None: file missing
    expected_sha256: str  # "": unknown
    actual_sha256: str  # "": not computed
    checked_against: str  # "manifest", "lock" or ""

    def describe(self) -> str:
        if self.status is Status.SIZE_MISMATCH:
            return f"{self.dest}: size mismatch (expected {self.expected_size} bytes, found {self.actual_size})"
        if self.status is Status.SHA256_MISMATCH:
            return f"{self.dest}: sha256 mismatch (expected {self.expected_sha256}, found {self.actual_sha256})"
        if self.status is Status.UNVERIFIABLE:
            return f"{self.dest}: unverifiable (no sha256 in the manifest or the lock file)"
        if self.status is Status.OK and self.checked_against == "lock":
            return f"{self.dest}: ok (against the sha256 recorded at download)"
        return f"{self.dest}: {self.status.value}"


@dataclass(frozen=True)
class VerifyReport:
    name: str
    set_dir: Path
    files: tuple[FileCheck, ...]

    @property
    def ok(self) -> bool:
        """Every file present and checked against a known sha256."""
        return all(check.status is Status.OK for check in self.files)

    @property
    def usable(self) -> bool:
        """Nothing missing or mismatched (unverifiable files allowed)."""
        return all(check.status in (Status.OK, Status.UNVERIFIABLE) for check in self.files)


def verify_set(
    manifest: Manifest,
    name: str,
    weights_dir: Path | str | None = None,
    *,
    progress: Progress | None = None,
) -> VerifyReport:
    """Check every file of a set on disk: presence, size, then sha256 (streamed)."""
    folder = set_dir(weights_dir, name)
    lock = _read_lock(folder)
    checks = tuple(_check_file(folder, spec, lock, progress) for spec in manifest.get(name).files)
    return VerifyReport(name=name, set_dir=folder, files=checks)


def check_files(folder: Path, model_set: ManifestSet, digest: Callable[[Path], str]) -> tuple[FileCheck, ...]:
    """verify_set's checks of the set's files in `folder` (any folder), each file's sha256 computed by `digest`."""
    lock = _read_lock(folder)
    return tuple(_check_file(folder, spec, lock, None, digest) for spec in model_set.files)


def _check_file(
    folder: Path,
    spec: FileSpec,
    lock: dict[str, dict],
    progress: Progress | None,
    digest: Callable[[Path], str] | None = None,
) -> FileCheck:
    expected, source = _expected_sha256(spec, lock)
    target = folder / spec.dest

    def result(status: Status, size: int | None = None, actual: str = "") -> FileCheck:
        return FileCheck(spec.dest, status, spec.size, size, expected, actual, source)

    if not target.is_file():
        return result(Status.MISSING)
    size = target.stat().st_size
    if spec.size and size != spec.size:
        return result(Status.SIZE_MISMATCH, size)
    if not expected:
        return result(Status.UNVERIFIABLE, size)
    actual = digest(target) if digest else sha256_file(target, progress=progress, label=spec.dest)
    return result(Status.OK if actual == expected else Status.SHA256_MISMATCH, size, actual)


def sha256_file(path: Path, *, progress: Progress | None = None, label: str = "") -> str:
    return _hash_into(hashlib.sha256(), path, progress, label).hexdigest()


def _hash_into(hasher, path: Path, progress: Progress | None = None, label: str = ""):
    total, done = path.stat().st_size, 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
            done += len(chunk)
            if progress:
                progress(label or str(path), done, total)
    return hasher


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileOutcome:
    dest: str
    action: str  # "skipped", "downloaded" or "resumed"
    sha256: str
    verified: bool  # False: no sha256 was known, the observed one went to the lock file


@dataclass(frozen=True)
class DownloadReport:
    name: str
    set_dir: Path
    files: tuple[FileOutcome, ...]

    def with_action(self, action: str) -> list[FileOutcome]:
        return [outcome for outcome in self.files if outcome.action == action]

    @property
    def recorded_unverified(self) -> list[FileOutcome]:
        return [outcome for outcome in self.files if not outcome.verified]


def download_set(
    manifest: Manifest,
    name: str,
    weights_dir: Path | str | None = None,
    *,
    endpoint: str | None = None,
    progress: Progress | None = None,
    client: httpx.Client | None = None,
) -> DownloadReport:
    """Fetch every file of a set that is not already present and verified.

    Each file streams into ``<dest>.part`` (continued with a Range request if a
    previous run left one), is checked for size and sha256, then renamed into
    place. ``endpoint`` defaults to $SEGSWAP_HF_ENDPOINT, $HF_ENDPOINT or
    huggingface.co; $HF_TOKEN, if set, is sent as a bearer token.
    """
    model_set = manifest.get(name)
    folder = set_dir(weights_dir, name)
    base = resolve_endpoint(endpoint)
    own_client = client is None
    client = client or _new_client()
    try:
        return DownloadReport(name, folder, _download_files(client, base, folder, model_set, progress))
    finally:
        if own_client:
            client.close()


def _new_client() -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(60.0, connect=15.0),
        follow_redirects=True,
        headers={"User-Agent": "segswap-weights"},
    )


def _download_files(
    client: httpx.Client, base: str, folder: Path, model_set: ManifestSet, progress: Progress | None
) -> tuple[FileOutcome, ...]:
    lock = _read_lock(folder)
    outcomes: dict[str, FileOutcome] = {}
    pending: list[FileSpec] = []
    for spec in model_set.files:
        check = _check_file(folder, spec, lock, None)
        if check.status is Status.OK:
            outcomes[spec.dest] = FileOutcome(spec.dest, "skipped", check.actual_sha256, True)
            if progress:
                progress(spec.dest, check.actual_size or 0, check.actual_size)
        else:
            pending.append(spec)
    _ensure_free_space(folder, pending)
    for spec in pending:
        expected, _ = _expected_sha256(spec, lock)
        outcomes[spec.dest] = _fetch(client, base, folder, spec, expected, progress)
    return tuple(outcomes[spec.dest] for spec in model_set.files)


def _ensure_free_space(folder: Path, pending: list[FileSpec]) -> None:
    need = sum(max(spec.size - _part_size(_part_path(folder / spec.dest)), 0) for spec in pending)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise WeightsError(
            f"not enough disk space under {probe}: the download needs {_gib(need)} more and {_gib(free)} is free"
        )


def _fetch(
    client: httpx.Client, base: str, folder: Path, spec: FileSpec, expected: str, progress: Progress | None
) -> FileOutcome:
    target = folder / spec.dest
    part = _part_path(target)
    part.parent.mkdir(parents=True, exist_ok=True)
    if spec.size and _part_size(part) > spec.size:
        part.unlink()
    resumed = _part_size(part) > 0
    hasher, commit = _stream_to_part(client, base, spec, part, progress)
    size = _check_downloaded_size(part, spec)
    actual = hasher.hexdigest()
    if expected and actual != expected:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"sha256 mismatch for {spec.dest}: expected {expected}, got {actual}; "
            "the partial download was deleted, run the download again"
        )
    os.replace(part, target)
    _record_lock(folder, spec, actual, size, commit)
    return FileOutcome(spec.dest, "resumed" if resumed else "downloaded", actual, bool(expected))


def _stream_to_part(
    client: httpx.Client, base: str, spec: FileSpec, part: Path, progress: Progress | None
) -> tuple[object, str | None]:
    """Bring ``part`` to the full file; return (sha256 hasher over it, X-Repo-Commit)."""
    offset = _part_size(part)
    if offset and offset == spec.size:
        return _hash_into(hashlib.sha256(), part), None
    try:
        with client.stream("GET", spec.url(base), headers=_request_headers(offset), follow_redirects=True) as resp:
            if resp.status_code != 416 or not offset:
                return _receive(resp, spec, part, offset, progress)
            commit = resp.headers.get("x-repo-commit")
            remote_size = _content_range_total(resp)
    except httpx.TransportError as exc:
        raise _transport_error(base, spec, exc) from None
    # 416 on "bytes=N-": the server has nothing past N, so the .part is complete,
    # unless the server reports another total size; then start over.
    if remote_size not in (None, offset):
        part.unlink()
        return _stream_to_part(client, base, spec, part, progress)
    return _hash_into(hashlib.sha256(), part), commit


def _receive(
    resp: httpx.Response, spec: FileSpec, part: Path, offset: int, progress: Progress | None
) -> tuple[object, str | None]:
    _raise_for_status(resp, spec)
    if resp.status_code != 206:
        offset = 0  # the server ignored Range (or none was sent): start over
    elif _content_range_start(resp) not in (None, offset):
        part.unlink()
        raise WeightsError(f"the server resumed {spec.dest} at the wrong byte; run the download again")
    hasher = _hash_into(hashlib.sha256(), part) if offset else hashlib.sha256()
    _write_body(resp, part, offset, hasher, spec.dest, _expected_total(resp, offset, spec), progress)
    return hasher, resp.headers.get("x-repo-commit")


def _request_headers(offset: int) -> dict[str, str]:
    # identity: byte offsets in Range must refer to the stored bytes, not a gzip stream.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _raise_for_status(resp: httpx.Response, spec: FileSpec) -> None:
    code = resp.status_code
    url = (resp.history[0] if resp.history else resp).request.url  # as asked, not the CDN redirect
    if code in (200, 206):
        return
    if code in (401, 403):
        raise WeightsError(f"the hub refused {spec.repo} (HTTP {code}); set HF_TOKEN to a token that can read it")
    if code == 404:
        raise WeightsError(
            f"{url} was not found (HTTP 404); the manifest names a repo, revision or path the endpoint lacks"
        )
    raise WeightsError(f"unexpected HTTP {code} while downloading {spec.dest} from {url}")


def _write_body(
    resp: httpx.Response, part: Path, offset: int, hasher, dest: str, total: int | None, progress: Progress | None
) -> None:
    done = offset
    with part.open("ab" if offset else "wb") as fh:
        if progress:
            progress(dest, done, total)
        for chunk in resp.iter_bytes():  # unbuffered: bytes received before a drop reach the .part
            fh.write(chunk)
            hasher.update(chunk)
            done += len(chunk)
            if progress:
                progress(dest, done, total)


def _check_downloaded_size(part: Path, spec: FileSpec) -> int:
    size = _part_size(part)
    if spec.size and size < spec.size:
        raise WeightsError(f"download of {spec.dest} stopped at {size} of {spec.size} bytes; run it again to resume")
    if spec.size and size > spec.size:
        part.unlink()
        raise WeightsError(
            f"{spec.dest} came out at {size} bytes but the manifest says {spec.size}; the download was deleted"
        )
    return size


def _transport_error(base: str, spec: FileSpec, exc: httpx.TransportError) -> WeightsError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return WeightsError(f"the endpoint {base} is not an http(s) URL: {reason}")
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError)):
        return WeightsError(
            f"cannot reach {base}: {reason}; download on a machine with internet and copy the folder, "
            "or set SEGSWAP_WEIGHTS_DIR"
        )
    return WeightsError(f"download of {spec.dest} was interrupted ({reason}); run it again to resume")


def _expected_total(resp: httpx.Response, offset: int, spec: FileSpec) -> int | None:
    if spec.size:
        return spec.size
    length = resp.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


def _content_range_start(resp: httpx.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", resp.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _content_range_total(resp: httpx.Response) -> int | None:
    match = re.search(r"/(\d+)\s*$", resp.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _part_size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
