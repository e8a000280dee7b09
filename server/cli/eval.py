"""`segswap eval`: the suite of real photographs through an engine; a JSON report and a contact sheet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from server.cli.common import add_engine_flags, settings_from
from server.serving.workers import load_configured_engine


def add_eval_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run the eval suite through an engine; write report.json, sheet.png and the outputs",
        description="Run the suite of real photographs (pipelines/evaluation/suite) through an engine and write "
        "report.json (weight-free measures against their thresholds), sheet.png (scene, mask, object, output per "
        "case) and each output. Exits 1 when a threshold is missed.",
    )
    parser.add_argument("--out", type=Path, default=Path("eval-out"), help="folder to write into (default eval-out)")
    add_engine_flags(parser)
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluation.selection import load_selections
    from pipelines.evaluation.suite import evaluate, load_suite
    from pipelines.masks import load_segmenter

    settings = settings_from(args)
    engine = load_configured_engine(settings)
    report = evaluate(
        engine,
        load_suite(),
        args.out,
        similarity=_similarity(settings.weights_dir),
        segmenter=load_segmenter(settings.weights_dir),
        selections=load_selections(),
    )
    print(json.dumps(_summary(report), indent=2))
    print(f"wrote {args.out / 'report.json'} and {args.out / 'sheet.png'}", file=sys.stderr)
    return 0 if report["passed"] else 1


def _similarity(weights_dir: Path):
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return None
    from pipelines.evaluation.similarity import clip_similarity

    return clip_similarity(weights_dir)


def _summary(report: dict) -> dict:
    cases = {
        row["case"]: {name: entry["value"] for name, entry in row["measures"].items()}
        | ({"object_similarity": row["object_similarity"]} if "object_similarity" in row else {})
        for row in report["cases"]
    }
    selection = {
        row["case"]: {"box_iou": row["box_iou"]["value"], "by": row["segmenter"]} for row in report["selection"]
    }
    return {"engine": report["engine"], "passed": report["passed"], "cases": cases, "selection": selection}
