"""Where an experiment's results go: `<name>.<format>` and `<name>.json` (its parameters), written atomically.

The metadata file is written last, so its presence means the output is complete: a re-run skips those, and an
output interrupted half-way is simply made again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
SUMMARY = "summary"  # a batch's summary.json: no output may take the name
MAX_NAME = 200  # with its longest suffix (.webp.part) well under the 255 bytes most file systems allow a name


def refused_name(name: str) -> str | None:
    """Why `name` (already made of safe characters) cannot name an output, or None."""
    if len(name) > MAX_NAME:
        return f"the name is {len(name)} characters long, more than {MAX_NAME}"
    if name.lower() == SUMMARY:  # lower: a case-insensitive file system would still overwrite summary.json
        return f"the name {name!r} is reserved for the batch's {SUMMARY}.json"
    return None


def image_path(out_dir: Path, name: str, image_format: str) -> Path:
    return out_dir / f"{name}.{EXTENSIONS[image_format]}"


def is_complete(out_dir: Path, name: str, image_format: str) -> bool:
    return (out_dir / f"{name}.json").is_file() and image_path(out_dir, name, image_format).is_file()


def write_output(out_dir: Path, name: str, image_format: str, data: bytes, metadata: dict) -> Path:
    target = image_path(out_dir, name, image_format)
    _atomic_write(target, data)
    _atomic_write(out_dir / f"{name}.json", (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
    return target


def write_summary(out_dir: Path, summary: dict) -> None:
    _atomic_write(out_dir / f"{SUMMARY}.json", (json.dumps(summary, indent=2) + "\n").encode())


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    os.replace(temporary, path)
