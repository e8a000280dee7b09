"""Per-request LoRAs: the operator's files, one folder per model set.

Layout: `<weights_dir>/<set>/loras/<name>.safetensors` (a kohya, diffusers or PEFT-format LoRA for that set's
denoiser: the UNet of sdxl/sd15, the transformer of flux2-klein). A request names one by `<name>`, the file
name without `.safetensors`; the name must be a plain file name (letters, digits, `.`, `_`, `-`; no path
separator, no `..`), so a request can never reach a file outside the folder. `lora_scale` (0..MAX_SCALE)
weighs it; 0 is the same as none.

The sha256 of each LoRA an engine loaded is kept under (engine name, LoRA name), for the record of what made
an output (server/inputs/metadata.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipelines.errors import InvalidInput
from pipelines.models.weights import sha256_file

FOLDER = "loras"
SUFFIX = ".safetensors"
MAX_SCALE = 2.0
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

_digests: dict[tuple[str, str], str] = {}  # (engine name, LoRA name) -> sha256 of the file it loaded


def lora_names(set_folder: Path) -> list[str]:
    """The LoRAs the set's `loras/` folder holds, by name."""
    folder = Path(set_folder) / FOLDER
    return sorted(path.name[: -len(SUFFIX)] for path in folder.glob(f"*{SUFFIX}") if path.is_file())


def lora_path(set_folder: Path, name: str) -> Path:
    """The file of LoRA `name` in the set's folder; an InvalidInput (field lora) naming the available ones when
    the name is not a plain file name or no such file is there."""
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise InvalidInput("must be a plain file name (letters, digits, '.', '_', '-'; no path)", "lora")
    path = Path(set_folder) / FOLDER / f"{name}{SUFFIX}"
    if not path.is_file():
        available = ", ".join(lora_names(set_folder)) or f"none: the set has no {FOLDER}/*{SUFFIX} files"
        raise InvalidInput(f"no LoRA named {name!r} in this model set (available: {available})", "lora")
    return path


def note_lora(engine_name: str, name: str, path: Path) -> str:
    """Remember the sha256 of the LoRA file an engine loaded as `name`; returns it."""
    _digests[engine_name, name] = sha256_file(path)
    return _digests[engine_name, name]


def lora_digest(engine_name: str, name: str) -> str | None:
    """The sha256 of the file loaded as LoRA `name` by the engine `engine_name` in this process, if any."""
    return _digests.get((engine_name, name))
