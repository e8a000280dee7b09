"""A JSON object as a request or a batch line sends it: each name given once, every number readable.

The standard library keeps the last of a name given twice, silently, and raises a bare ValueError on an integer
of more digits than Python converts (sys.get_int_max_str_digits); here both are a BadRequest naming the field.
"""

from __future__ import annotations

import json
import sys

from server.errors import BadRequest


def parse_json_object(text: bytes | str, what: str = "the JSON body") -> dict:
    """`text` as a JSON object; BadRequest (naming the field where there is one) when it is not one."""
    try:
        data = json.loads(text, parse_int=_whole_number, object_pairs_hook=_once_each)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply; the request fields are flat") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be an object with the request fields")
    _refuse_too_long_numbers(data)
    return data


class _TooLong:
    """Stands for an integer with more digits than Python converts (sys.get_int_max_str_digits)."""


TOO_LONG = _TooLong()


def _once_each(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose names are each given once: a repeated one is refused, as a multipart field sent twice
    is."""
    data: dict = {}
    for name, value in pairs:
        if name in data:
            raise BadRequest(f"'{name}' is given twice in one JSON object; send it once")
        data[name] = value
    return data


def _whole_number(text: str) -> int | _TooLong:
    try:
        return int(text)
    except ValueError:  # past the digit limit; which field holds it is said once the object is read
        return TOO_LONG


def _refuse_too_long_numbers(data: dict) -> None:
    for name, value in data.items():
        if _holds_too_long(value):
            limit = sys.get_int_max_str_digits()
            raise BadRequest(f"field '{name}': a number of more than {limit} digits is too long to read")


def _holds_too_long(value: object) -> bool:
    """Whether TOO_LONG is in `value`, however deep (iterative: a nested value may be as deep as JSON allows)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if item is TOO_LONG:
            return True
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return False
