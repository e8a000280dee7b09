"""Where the selection models (pipelines/masks) live: `<weights_dir>/sam2/` and `<weights_dir>/owlv2/`, each a
transformers model folder as its Hub repository ships it (see pipelines/models/manifest.toml)."""

from __future__ import annotations

from pathlib import Path

SAM2 = "sam2"
DETECTOR = "owlv2"
NEEDED = {
    SAM2: ("config.json", "model.safetensors"),
    DETECTOR: ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"),
}


def installed(weights_dir: Path, name: str) -> Path | None:
    """The set's folder when every file the model loads from is there, else None."""
    folder = Path(weights_dir) / name
    return folder if all((folder / part).is_file() for part in NEEDED[name]) else None


def missing(weights_dir: Path, name: str) -> list[str]:
    folder = Path(weights_dir) / name
    return [part for part in NEEDED[name] if not (folder / part).is_file()]
