"""Where an experiment's results go: `<name>.<format>` and `<name>.json` (its parameters), written atomically.

The metadata file is written last, so its presence means the output is complete: a re-run skips those, and an
output interrupted half-way is simply made again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def image_path(out_dir: Path, name: str, image_format: str) -> Path:
    return out_dir / f"{name}.{EXTENSIONS[image_format]}"


def is_complete(out_dir: Path, name: str, image_format: str) -> bool:
    return (out_dir / f"{name}.json").is_file() and image_path(out_dir, name, image_format).is_file()


def write_output(out_dir: Path, name: str, image_format: str, data: bytes, metadata: dict) -> Path:
    target = image_path(out_dir, name, image_format)
    _atomic_write(target, data)
    _atomic_write(out_dir / f"{name}.json", (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
    return target


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    os.replace(temporary, path)
