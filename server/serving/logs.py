"""JSON logs: one object per line, access lines merged in as fields."""

from __future__ import annotations

import json
import logging


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


def configure_json_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
