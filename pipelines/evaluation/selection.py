"""The selection cases: a box around an object in a real photograph, the segmenter's mask against the object's
hand-made true outline (IoU), each written out as an overlay; beside it the IoU of the ellipse inscribed in the box,
the baseline a segmenter must beat."""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.evaluation import SUITE_DIR, metrics
from pipelines.masks import Segmenter, Selector

OVERLAY = (255, 0, 200)


@dataclass(frozen=True)
class SelectionCase:
    name: str
    image: Image.Image
    truth: np.ndarray
    selector: Selector


def load_selections(folder: Path = SUITE_DIR) -> list[SelectionCase]:
    raw = tomllib.loads((folder / "suite.toml").read_text())
    return [
        SelectionCase(
            name=entry["name"],
            image=Image.open(folder / entry["image"]).convert("RGB"),
            truth=np.asarray(Image.open(folder / entry["truth"]).convert("L")) > 127,
            selector=Selector.build(box=entry["box"]),
        )
        for entry in raw.get("selection", [])
    ]


def evaluate_selections(segmenter: Segmenter, cases: list[SelectionCase], out_dir: Path) -> list[dict]:
    """Each case's IoU against its threshold; `select-<case>.png` shows the mask (tinted) and the box."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        start = time.perf_counter()
        mask = segmenter.select(case.image, case.selector)
        seconds = time.perf_counter() - start
        value = metrics.iou(mask, case.truth)
        overlay(case.image, mask, case.selector).save(out_dir / f"select-{case.name}.png")
        rows.append(
            {
                "case": case.name,
                "segmenter": segmenter.name,
                "seconds": round(seconds, 3),
                "box_iou": {"value": round(value, 4), "passed": metrics.passes("box_iou", value)},
                "ellipse_iou": round(metrics.iou(ellipse_in_box(case.truth.shape, case.selector.box), case.truth), 4),
            }
        )
    return rows


def ellipse_in_box(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The ellipse inscribed in `box` (x0, y0, x1, y1) as a mask of `shape`: what a box alone says of an object, the
    baseline a segmenter must beat (on a round object it is already close to the outline)."""
    x0, y0, x1, y1 = box
    rows, cols = np.indices(shape) + 0.5  # pixel centres
    across = (cols - (x0 + x1) / 2) / ((x1 - x0) / 2)
    down = (rows - (y0 + y1) / 2) / ((y1 - y0) / 2)
    return across**2 + down**2 <= 1


def overlay(image: Image.Image, mask: np.ndarray, selector: Selector) -> Image.Image:
    """The image with the selected region tinted and its edge and the box drawn."""
    from PIL import ImageDraw

    out = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    out[mask] = 0.55 * out[mask] + 0.45 * np.array(OVERLAY, np.float32)
    picture = Image.fromarray(out.astype(np.uint8))
    if selector.box is not None:
        ImageDraw.Draw(picture).rectangle(
            [selector.box[0], selector.box[1], selector.box[2] - 1, selector.box[3] - 1], outline=(255, 255, 0)
        )
    return picture
