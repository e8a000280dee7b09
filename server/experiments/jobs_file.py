"""Reading a jobs file: JSONL or CSV, one swap a line, the contract's fields plus an optional `name`.

Image fields are paths (relative to the jobs file) or http(s) URLs; a line with `mode` erase needs no object.
Each line is validated like an API request; a line that does not validate becomes a failed entry, reported,
while the others go on.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pipelines import IMAGE_FIELDS
from server.contract import SwapRequest, describe_validation_error
from server.errors import BadRequest
from server.experiments.outputs import MAX_NAME, refused_name
from server.inputs.decode import is_url
from server.inputs.json_object import parse_json_object

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Entry:
    """One line: its output name, and the request or why it cannot be run."""

    line: int
    name: str
    request: SwapRequest | None = None
    sources: dict[str, str] | None = None  # image field -> absolute path or URL
    error: str | None = None


def read_jobs(path: Path) -> list[Entry]:
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    entries, seen = [], set()
    for line, row in rows:
        entry = _entry(line, row, path.parent)
        if entry.name.lower() in seen:  # lower: on a case-insensitive file system `A` would overwrite `a`
            entry = Entry(line, f"{entry.name}-line{line}", error=f"the name {entry.name!r} is used by an earlier line")
        seen.add(entry.name.lower())
        entries.append(entry)
    return entries


def _jsonl_rows(path: Path) -> list[tuple[int, dict | str]]:
    rows = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            rows.append((number, parse_json_object(text, "the line")))
        except BadRequest as exc:
            rows.append((number, exc.message))
    return rows


def _csv_rows(path: Path) -> list[tuple[int, dict | str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return [(reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}) for row in reader]


def _entry(line: int, row: dict | str, folder: Path) -> Entry:
    default_name = f"line-{line:05d}"
    if isinstance(row, str):
        return Entry(line, default_name, error=row)
    values = dict(row)
    name = SAFE_NAME.sub("_", str(values.pop("name", "") or default_name)).strip("._") or default_name
    if (refused := refused_name(name)) is not None:
        return Entry(line, default_name if len(name) > MAX_NAME else name, error=refused)
    try:
        request = SwapRequest.model_validate(values)
    except ValidationError as exc:
        return Entry(line, name, error=describe_validation_error(exc))
    sent = [field for field in IMAGE_FIELDS if getattr(request, field) is not None]  # an erase has no object
    sources = {field: _source(getattr(request, field), folder) for field in sent}
    return Entry(line, name, request, sources)


def _source(value: str, folder: Path) -> str:
    return value if is_url(value) else str((folder / value).resolve())
