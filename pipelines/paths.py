"""Where segswap keeps its state, outside the source tree: one function per default path.

The data directory is `SEGSWAP_DATA_DIR`, else the platform's user data directory
(`~/.local/share/segswap` on Linux). Model weights go to `SEGSWAP_WEIGHTS_DIR`, else
`weights/` inside the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "segswap"


def data_dir() -> Path:
    """Keys, credits and v2 jobs live here."""
    given = os.environ.get("SEGSWAP_DATA_DIR")
    return Path(given).expanduser() if given else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def weights_dir() -> Path:
    """Downloaded model sets live here, one folder each."""
    given = os.environ.get("SEGSWAP_WEIGHTS_DIR")
    return Path(given).expanduser() if given else data_dir() / "weights"
