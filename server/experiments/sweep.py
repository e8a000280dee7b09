"""A parameter sweep: every combination of the varied fields on one scene, then contact sheets and an index.

The first two varied fields are the sheet's rows and columns; each combination of the others gets a sheet.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from pipelines import Engine, build_job
from pipelines.evaluation.sheet import CELL, paste_fitted
from server.experiments.outputs import write_output
from server.inputs.encode import encode_image

LABEL = 28
MARGIN = 150  # room for the row labels
SHEET_SIDE = 10  # cells a sheet holds across and down; a larger grid is split over several sheets


@dataclass(frozen=True)
class Result:
    name: str
    path: Path
    combination: dict  # the varied fields' values


def cell_count(varied: list[tuple[str, list]]) -> int:
    """How many combinations there are, counted without making them."""
    return math.prod(len(values) for _, values in varied)


def combinations(varied: list[tuple[str, list]]) -> list[dict]:
    names = [name for name, _ in varied]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(values for _, values in varied))]


def run_sweep(
    engine: Engine,
    fixed: dict,
    varied: list[tuple[str, list]],
    images: dict,
    sources: dict,
    out_dir: Path,
    progress=None,
    encode=None,
) -> list[Result]:
    """One swap per combination, written as sweep-NNNN with its metadata; `encode(image, values, seed, engine)`
    writes each output's bytes (the CLI's adds its record and marks), else a plain encode."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for index, combination in enumerate(combinations(varied), start=1):
        values = {**fixed, **combination}
        job = build_job(values, images)
        started = time.perf_counter()
        image = engine.swap(job)
        seconds = time.perf_counter() - started
        name = f"sweep-{index:04d}"
        parameters = {**values, **sources, "seed": job.seed}
        info = {
            "name": name,
            "engine": engine.name,
            "seconds": seconds,
            "parameters": parameters,
            "varied": combination,
        }
        fmt = values.get("image_format", "png")
        if encode is not None:
            data = encode(image, values, job.seed, engine.name)
        else:
            data = encode_image(image, fmt, values.get("image_quality", 95))
        path = write_output(out_dir, name, fmt, data, info)
        results.append(Result(name, path, combination))
        if progress is not None:
            progress(name)
    return results


def write_sheets(results: list[Result], varied: list[tuple[str, list]], out_dir: Path) -> list[Path]:
    """One contact sheet per combination of the fields after the first two, split into sheets of at most
    SHEET_SIDE rows and columns (a 100 x 100 grid on one sheet would be 26,000 px a side)."""
    rows_field, rows = varied[0] if varied else ("", [None])
    cols_field, cols = varied[1] if len(varied) > 1 else ("", [None])
    pages = [
        (fixed, row_part, col_part)
        for fixed in combinations(varied[2:]) or [{}]
        for row_part in _parts(rows)
        for col_part in _parts(cols)
    ]
    sheets = []
    for number, (fixed, row_part, col_part) in enumerate(pages, start=1):
        chosen = [r for r in results if all(r.combination.get(k) == v for k, v in fixed.items())]
        title = ", ".join(f"{k}={v}" for k, v in fixed.items()) or "all"
        spans = [span for span in (_span(rows_field, rows, row_part), _span(cols_field, cols, col_part)) if span]
        if spans:
            title += f" ({'; '.join(spans)})"
        sheet = _sheet(chosen, rows_field, row_part, cols_field, col_part, title)
        path = out_dir / (f"sheet-{number:02d}.png" if len(pages) > 1 else "sheet.png")
        sheet.save(path)
        sheets.append(path)
    return sheets


def _parts(values: list) -> list[list]:
    return [values[start : start + SHEET_SIDE] for start in range(0, len(values), SHEET_SIDE)]


def _span(field: str, values: list, part: list) -> str:
    """Which of a field's values a sheet shows, when it cannot show them all."""
    if len(values) <= SHEET_SIDE:
        return ""
    first = values.index(part[0]) + 1
    return f"{field} {first}-{first + len(part) - 1} of {len(values)}"


def _sheet(results, rows_field, rows, cols_field, cols, title) -> Image.Image:
    font = ImageFont.load_default(size=18)
    width = MARGIN + len(cols) * (CELL + 8) + 8
    height = 2 * LABEL + 16 + len(rows) * (CELL + 8)
    sheet = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), f"sweep: {title}", fill=(20, 20, 20), font=font)
    for c, col in enumerate(cols):
        if cols_field:
            draw.text((MARGIN + c * (CELL + 8), LABEL + 8), f"{cols_field} = {col}", fill=(20, 20, 20), font=font)
    for r, row in enumerate(rows):
        top = 2 * LABEL + 16 + r * (CELL + 8)
        if rows_field:
            draw.text((8, top + CELL // 2 - 20), f"{rows_field}", fill=(20, 20, 20), font=font)
            draw.text((8, top + CELL // 2 + 2), f"= {row}", fill=(20, 20, 20), font=font)
        for c, col in enumerate(cols):
            match = [
                x
                for x in results
                if x.combination.get(rows_field, None) == row
                and (not cols_field or x.combination.get(cols_field) == col)
            ]
            if match:
                paste_fitted(sheet, Image.open(match[0].path), (MARGIN + c * (CELL + 8), top))
    return sheet


def write_index(results: list[Result], sheets: list[Path], out_dir: Path) -> Path:
    """index.html: the sheets, then every image with all its parameters."""
    cards = []
    for result in results:
        info = json.loads((out_dir / f"{result.name}.json").read_text())
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in sorted(info["parameters"].items())
        )
        varied = ", ".join(f"{k}={v}" for k, v in result.combination.items())
        cards.append(
            f'<figure><img src="{html.escape(result.path.name)}" alt="{html.escape(varied)}" width="256">'
            f"<figcaption>{html.escape(varied)}</figcaption><table>{rows}</table></figure>"
        )
    sheet_tags = "".join(f'<p><img src="{html.escape(p.name)}" alt="contact sheet"></p>' for p in sheets)
    page = (
        "<!doctype html><html lang='en'><meta charset='utf-8'><title>segswap sweep</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;vertical-align:top;margin:8px;width:300px}"
        "table{font-size:12px;border-collapse:collapse}th{text-align:left;padding-right:6px}</style>"
        f"<h1>segswap sweep</h1>{sheet_tags}{''.join(cards)}</html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(page)
    return path
