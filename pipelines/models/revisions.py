"""Which pinned revisions a loaded model set is, for the record of what made an output.

A set's folder says nothing of where its files came from; the manifest pins each file's Hub revision and
sha256. An engine's set is taken to be those revisions only when every file the manifest lists for it is in
its folder with the known sha256 (the manifest's, or the one recorded at download where the manifest has none:
weights.py) and the folder holds no other weights; otherwise it is UNVERIFIED (a tiny random-weight set, a
single-file checkpoint, files copied by hand or fine-tuned). Checked when the engine loads, once per name in
this process; each file's sha256 is kept by (path, size, mtime), so the next engine on the same files (one a
GPU) reads nothing again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipelines.errors import WeightsError
from pipelines.models.loras import FOLDER as LORAS
from pipelines.models.model_sets import ModelSet
from pipelines.models.weights import LOCK_NAME, Manifest, Status, check_files, load_manifest, sha256_file

UNVERIFIED = "unverified local files"
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf"}

Revisions = dict[str, str] | str
"""{repository: revision}, or UNVERIFIED."""

_loaded: dict[str, Revisions] = {}  # engine name -> what its set was found to be when it loaded


def note_loaded(engine_name: str, model_set: ModelSet, manifest: Manifest | None = None) -> Revisions:
    """Check the set an engine just loaded and remember the answer under the engine's name."""
    _loaded[engine_name] = set_revisions(model_set, manifest)
    return _loaded[engine_name]


def loaded_revisions(engine_name: str) -> Revisions | None:
    """What the set last loaded under `engine_name` was found to be; None when none was loaded here."""
    return _loaded.get(engine_name)


def set_revisions(model_set: ModelSet, manifest: Manifest | None = None) -> Revisions:
    """The manifest's revisions of the set's repositories when its folder holds exactly the pinned files."""
    try:
        pinned = (manifest or load_manifest()).get(model_set.name)
        checks = check_files(model_set.folder, pinned, cached_sha256)
    except (WeightsError, OSError):  # not a set the manifest names, or a lock file that cannot be read
        return UNVERIFIED
    expected = {spec.dest for spec in pinned.files}
    if any(check.status is not Status.OK for check in checks) or _other_weights(model_set.folder, expected):
        return UNVERIFIED
    return dict(sorted({spec.repo: spec.revision for spec in pinned.files}.items()))


def _other_weights(folder: Path, expected: set[str]) -> bool:
    """Whether the folder holds a weight file the manifest does not name (a diffusers loader might pick it).
    The operator's LoRAs (loras/) are not the set's: a request names one, and its record gives its sha256."""
    return any(
        path.suffix in WEIGHT_SUFFIXES and path.relative_to(folder).as_posix() not in expected
        for path in folder.rglob("*")
        if path.is_file() and path.name != LOCK_NAME and path.relative_to(folder).parts[0] != LORAS
    )


def cached_sha256(path: Path) -> str:
    status = path.stat()
    return _sha256(str(path.resolve()), status.st_size, status.st_mtime_ns, status.st_ino)


@lru_cache(maxsize=512)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """Keyed by what changes when the file does: a rewrite or a replacement is hashed again."""
    return sha256_file(Path(path))
