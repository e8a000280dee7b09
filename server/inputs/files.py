"""Reading a file the user names by path (the CLI, batches): a regular file only, and at most a cap of it.

/dev/zero would fill the memory, a FIFO would block for ever, a huge file would be read whole: each is refused
in one sentence before its content is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnreadableFile(Exception):
    """Why the path cannot be read, in one sentence naming it (its control characters escaped)."""


def read_file(path: Path | str, max_bytes: int) -> bytes:
    shown = printable(str(path))
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to would otherwise wait for ever, before fstat could refuse it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UnreadableFile(f"no such file: {shown}") from None
    except OSError as exc:
        raise UnreadableFile(f"{shown} cannot be read ({exc.strerror})") from None
    try:
        _check(os.fstat(fd), shown, max_bytes)  # what was opened, not what the name points at now
    except UnreadableFile:
        os.close(fd)
        raise
    with open(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)  # the file may grow after fstat
    if len(data) > max_bytes:
        raise UnreadableFile(_too_large(shown, max_bytes))
    return data


def _check(opened: os.stat_result, shown: str, max_bytes: int) -> None:
    if stat.S_ISDIR(opened.st_mode):
        raise UnreadableFile(f"{shown} is a folder, not a file")
    if not stat.S_ISREG(opened.st_mode):
        raise UnreadableFile(f"{shown} is not a regular file")
    if opened.st_size > max_bytes:
        raise UnreadableFile(_too_large(shown, max_bytes))


def _too_large(shown: str, max_bytes: int) -> str:
    return f"{shown} is larger than {max_bytes} bytes" + (f" ({max_bytes / 2**20:g} MiB)" if max_bytes >= 2**20 else "")


def printable(text: str) -> str:
    """`text` with its control characters escaped: a crafted name must not clear the terminal or fake lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
