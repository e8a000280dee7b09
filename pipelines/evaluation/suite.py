"""Running the suite: each case through an engine, measured, written out with a report and a contact sheet."""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.evaluation import SUITE_DIR, metrics
from pipelines.evaluation.selection import SelectionCase, evaluate_selections
from pipelines.evaluation.sheet import contact_sheet
from pipelines.imageops import grow_mask, mask_box, normalize_mask
from pipelines.interface import Engine
from pipelines.job import build_job
from pipelines.masks import Segmenter
from pipelines.placement import cut_out, place, resolve_mode
from pipelines.placement.objects import fit_into
from pipelines.placement.patterns import tile_grid

FILE_KEYS = ("name", "main", "mask", "object", "checks", "inclusions")


@dataclass(frozen=True)
class Case:
    name: str
    main: Image.Image
    mask: Image.Image
    object: Image.Image | None  # None: an erase
    checks: tuple[str, ...]
    values: dict = field(default_factory=dict)  # the contract's fields for this case (prompt, repeats, ...)
    inclusions: Image.Image | None = None  # hand-marked badges and tags inside a garment's mask


def load_suite(folder: Path = SUITE_DIR) -> list[Case]:
    raw = tomllib.loads((folder / "suite.toml").read_text())
    return [
        Case(
            name=entry["name"],
            main=Image.open(folder / entry["main"]).convert("RGB"),
            mask=Image.open(folder / entry["mask"]),
            object=Image.open(folder / entry["object"]) if "object" in entry else None,
            checks=tuple(entry["checks"]),
            values={key: value for key, value in entry.items() if key not in FILE_KEYS},
            inclusions=Image.open(folder / entry["inclusions"]) if "inclusions" in entry else None,
        )
        for entry in raw["case"]
    ]


def evaluate(
    engine: Engine,
    cases: list[Case],
    out_dir: Path,
    similarity=None,
    segmenter: Segmenter | None = None,
    selections: list[SelectionCase] = (),
) -> dict:
    """Run every case, write `<case>.png`, `report.json` and `sheet.png` into `out_dir`; return the report.

    `similarity(reference, crop) -> float`, when given, adds the object similarity of each case; `segmenter`
    runs the selection cases (box IoU against true outlines, `select-<case>.png`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, outputs = [], []
    for case in cases:
        job = build_job(case.values, {"main_image": case.main, "mask_image": case.mask, "object_image": case.object})
        start = time.perf_counter()
        output = engine.swap(job)
        seconds = time.perf_counter() - start
        output.save(out_dir / f"{case.name}.png")
        row = {
            "case": case.name,
            "engine": engine.name,
            "seconds": round(seconds, 3),
            "measures": measure(case, job, output),
        }
        if similarity is not None and case.object is not None:
            row["object_similarity"] = round(similarity(_reference(case, job), _crop(output, job)), 4)
        row["passed"] = all(entry["passed"] for entry in row["measures"].values())
        rows.append(row)
        outputs.append(output)
    selected = evaluate_selections(segmenter, list(selections), out_dir) if segmenter is not None else []
    report = {
        "engine": engine.name,
        "cases": rows,
        "selection": selected,
        "passed": all(row["passed"] for row in rows) and all(row["box_iou"]["passed"] for row in selected),
        "thresholds": {name: f"{op} {limit}" for name, (op, limit) in metrics.THRESHOLDS.items()},
    }
    if similarity is None:
        report["object_similarity"] = "skipped: no CLIP image encoder installed (segswap weights download sd15)"
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    contact_sheet(cases, outputs, rows).save(out_dir / "sheet.png")
    return report


def measure(case: Case, job, output: Image.Image) -> dict[str, dict]:
    out, original = np.asarray(output.convert("RGB")), np.asarray(case.main)
    mask = normalize_mask(case.mask, case.main.size)
    grown = grow_mask(mask, job.growmask)
    values = {"outside_changed": metrics.outside_changed(out, original, grown)}
    inclusions = normalize_mask(case.inclusions, case.main.size) & mask if case.inclusions else None
    for check in case.checks:
        if check == "pattern_colour_carried":
            pattern = np.asarray(case.object.convert("RGB"))
            values[check] = metrics.pattern_colour_carried(out, original, mask, pattern)
        elif check == "backdrop_leak":
            values[check] = metrics.backdrop_leak(out, mask, metrics.backdrop_colour(np.asarray(case.object)))
        elif check in ("shading_kept", "shading_depth") and inclusions is not None:  # a badge is not light
            values[check] = getattr(metrics, check)(out, original, mask & ~inclusions)
        elif check == "pattern_structure":
            values[check] = metrics.structure_carried(out, _tiled_pattern(case, job, grown), mask)
        elif check == "object_structure":
            reference, alpha = _fitted_object(case, grown)
            values[check] = metrics.structure_carried(out, reference, alpha >= 0.5)
        elif check == "inclusion_contrast":
            values[check] = metrics.inclusion_contrast(out, mask, inclusions)
        elif check == "edge_fringe":  # the object's outline is where placement put it, whatever the engine
            backdrop = metrics.backdrop_brightness(np.asarray(case.object))
            values[check] = metrics.edge_fringe(out, place(job).coverage, backdrop)
        else:
            values[check] = getattr(metrics, check)(out, original, mask)
    return {name: {"value": round(value, 4), "passed": metrics.passes(name, value)} for name, value in values.items()}


def _tiled_pattern(case: Case, job, grown: np.ndarray) -> np.ndarray:
    """The pattern as the engines tile it over the grown mask's box (their own tile_grid), at the scene's size."""
    left, top, right, bottom = mask_box(grown)
    size, tiled = (right - left, bottom - top), np.zeros((*grown.shape, 3), np.float32)
    pattern = case.object.convert("RGB")
    tiled[top:bottom, left:right] = tile_grid(pattern, size, job.horizontal_repeat, job.vertical_repeat)
    return tiled


def _fitted_object(case: Case, grown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out as the engines fit it into the grown mask's box (their own fit_into), and its alpha, at the
    scene's size."""
    left, top, right, bottom = mask_box(grown)
    layer, alpha = fit_into(cut_out(case.object), grown[top:bottom, left:right])
    reference, coverage = np.zeros((*grown.shape, 3), np.float32), np.zeros(grown.shape, np.float32)
    reference[top:bottom, left:right], coverage[top:bottom, left:right] = layer, alpha
    return reference, coverage


def _reference(case: Case, job) -> Image.Image:
    return cut_out(case.object) if resolve_mode(job) == "object" else case.object.convert("RGB")


def _crop(output: Image.Image, job) -> Image.Image:
    mask = grow_mask(normalize_mask(job.mask_image, output.size), job.growmask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return output.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
