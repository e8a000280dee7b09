"""JSON logs: one object per line, access lines merged in as fields."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """Log records as JSON objects; access lines are already JSON and are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        access = getattr(record, "access", None)
        if access is not None:  # the line's fields as they are, not its JSON text parsed again
            entry.update(access)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class CurrentStderr(logging.StreamHandler):
    """A handler that writes to sys.stderr as it is at each record, not as it was when the handler was made: one
    process can run the CLI more than once (tests capture and close stderr between runs; an embedding app may
    swap it), and a handler bound to a closed stream loses every line after."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current stderr


def configure_json_logging(level: str = "info") -> None:
    handler = CurrentStderr()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
