"""What a caller selects: a box, points (inside or outside), or words; checked against the image."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipelines.errors import InvalidInput

Box = tuple[int, int, int, int]
Point = tuple[int, int, int]  # x, y, 1 inside / 0 outside
StopFn = Callable[[], bool]  # asked as a selection goes on: True ends it with Stopped (a deadline passed, ...)
SELECTOR_FIELDS = ("box", "points", "text")
MAX_POINTS = 64
MAX_TEXT = 200


@dataclass(frozen=True)
class Selector:
    """Exactly one of `box` ([x0, y0, x1, y1], pixels, x1/y1 exclusive), `points` or `text`."""

    box: Box | None = None
    points: tuple[Point, ...] | None = None
    text: str | None = None

    @property
    def kind(self) -> str:
        return "box" if self.box is not None else "points" if self.points is not None else "text"

    @classmethod
    def build(
        cls,
        box: Sequence[float] | None = None,
        points: Sequence[Sequence[float]] | None = None,
        text: str | None = None,
    ) -> Selector:
        """A selector from plain values (JSON arrays, CLI numbers); what is wrong is an InvalidInput."""
        box, points = _plain(box), _plain(points)
        given = [name for name, value in zip(SELECTOR_FIELDS, (box, points, text), strict=True) if value is not None]
        if len(given) != 1:
            raise InvalidInput(
                "give exactly one of box, points or text" + (f" (got {', '.join(given)})" if given else "")
            )
        if box is not None:
            return cls(box=_box(box))
        if points is not None:
            return cls(points=_points(points))
        return cls(text=_text(text))

    def check(self, size: tuple[int, int]) -> None:
        """The selection must lie in an image of `size` (width, height)."""
        width, height = size
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise InvalidInput(f"[{x0}, {y0}, {x1}, {y1}] reaches outside the {width}x{height} image", "box")
        if self.points is not None:
            for x, y, _ in self.points:
                if not (0 <= x < width and 0 <= y < height):
                    raise InvalidInput(f"point ({x}, {y}) lies outside the {width}x{height} image", "points")


def _box(values: Sequence[float]) -> Box:
    if not isinstance(values, Sequence) or len(values) != 4 or not all(_is_number(v) for v in values):
        raise InvalidInput("must be four finite numbers [x0, y0, x1, y1]", "box")
    x0, y0, x1, y1 = (round(v) for v in values)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise InvalidInput("must be at least 2 pixels wide and high, with x0 < x1 and y0 < y1", "box")
    return x0, y0, x1, y1


def _points(values: Sequence[Sequence[float]]) -> tuple[Point, ...]:
    if not isinstance(values, Sequence) or not values or len(values) > MAX_POINTS:
        raise InvalidInput(f"must be a list of 1 to {MAX_POINTS} points [x, y, 1 or 0]", "points")
    points = []
    for value in values:
        if not isinstance(value, Sequence) or len(value) != 3 or not all(_is_number(v) for v in value):
            raise InvalidInput(
                "each point must be [x, y, label]: finite numbers, label 1 (inside) or 0 (outside)", "points"
            )
        if value[2] not in (0, 1):
            raise InvalidInput("a point's label must be 1 (inside) or 0 (outside)", "points")
        # A point names the pixel it falls in: 639.6 is in pixel 639.
        points.append((math.floor(value[0]), math.floor(value[1]), int(value[2])))
    if not any(label == 1 for *_, label in points):
        raise InvalidInput("at least one point must be inside (label 1)", "points")
    return tuple(points)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise InvalidInput(f"must be a non-empty description of at most {MAX_TEXT} characters", "text")
    return value.strip()


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value):
    """numpy arrays and scalars as plain lists and numbers (library callers pass them)."""
    return value.tolist() if hasattr(value, "tolist") else value
