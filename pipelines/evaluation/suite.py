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
from pipelines.imageops import grow_mask, normalize_mask
from pipelines.interface import Engine
from pipelines.job import build_job
from pipelines.masks import Segmenter
from pipelines.placement import cut_out, place, resolve_mode

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
        elif check == "shading_kept" and inclusions is not None:  # a badge is not light: folds are read on the fabric
            values[check] = metrics.shading_kept(out, original, mask & ~inclusions)
        elif check == "inclusion_contrast":
            values[check] = metrics.inclusion_contrast(out, mask, inclusions)
        elif check == "edge_fringe":  # the object's outline is where placement put it, whatever the engine
            backdrop = metrics.backdrop_brightness(np.asarray(case.object))
            values[check] = metrics.edge_fringe(out, place(job).coverage, backdrop)
        else:
            values[check] = getattr(metrics, check)(out, original, mask)
    return {name: {"value": round(value, 4), "passed": metrics.passes(name, value)} for name, value in values.items()}


def _reference(case: Case, job) -> Image.Image:
    return cut_out(case.object) if resolve_mode(job) == "object" else case.object.convert("RGB")


def _crop(output: Image.Image, job) -> Image.Image:
    mask = grow_mask(normalize_mask(job.mask_image, output.size), job.growmask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return output.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
