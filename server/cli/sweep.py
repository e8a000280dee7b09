"""`segswap sweep`: one scene, every combination of the listed values, a labelled contact sheet and index.html."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

from pipelines import IMAGE_FIELDS
from pipelines.masks.selector import SELECTOR_FIELDS
from server.cli.common import CliError, add_engine_flags, flag, settings_from, writable_folder
from server.cli.swap import IMAGE_HINTS
from server.contract import Selection, SwapRequest, describe_validation_error

TEXT_FIELDS = {"prompt", "negative_prompt"}  # may contain commas: repeat the flag to list several
# The scene and its region are the same in every cell; the model set is the one --model-set loads (an engine flag).
NOT_SWEPT = {*IMAGE_FIELDS, *SELECTOR_FIELDS, "base64", "model_set"}
KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false"}
MAX_CELLS = 256  # a few hundred: a grid past that is more likely a slip of the keyboard than a plan


class Ordered(argparse.Action):
    """Appends the flag's values and remembers the order fields first appeared in (rows, then columns)."""

    def __call__(self, parser, namespace, values, option_string=None):
        listed = [values] if self.dest in TEXT_FIELDS else [v.strip() for v in values.split(",") if v.strip()]
        getattr(namespace, self.dest).extend(listed)
        order = namespace.__dict__.setdefault("_order", [])
        if self.dest not in order:
            order.append(self.dest)


def add_sweep_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of parameter values on one scene; write a contact sheet and index.html",
        description="Every contract field may take several values (comma-separated, or the flag repeated; prompts "
        "by repeating the flag). The first two fields with several values are the sheet's rows and columns.",
    )
    fields = SwapRequest.model_fields
    for name in IMAGE_FIELDS:
        parser.add_argument(
            flag(name),
            dest=name,
            required=name == "main_image",
            help=fields[name].description.split(":")[0] + IMAGE_HINTS.get(name, ""),
        )
    for name in SELECTOR_FIELDS:
        what = fields[name].description.removeprefix("Extension: ")
        parser.add_argument(flag(name), dest=name, help=f"{what} One value: the region of every cell.")
    for name, info in fields.items():
        if name not in NOT_SWEPT:
            parser.add_argument(flag(name), dest=name, action=Ordered, default=[], help=f"{info.description}")
    parser.add_argument("--out", type=Path, required=True, help="folder for the images, the sheets and index.html")
    parser.add_argument(
        "--max-cells",
        type=_positive,
        default=MAX_CELLS,
        help=f"refuse a grid of more combinations than this, before anything runs (default {MAX_CELLS})",
    )
    add_engine_flags(parser)
    parser.set_defaults(handler=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    from server.experiments.regions import RegionMasks
    from server.experiments.sweep import cell_count, combinations, run_sweep, write_index, write_sheets
    from server.inputs.decode import decode_inputs
    from server.inputs.encode import encode_output
    from server.inputs.metadata import input_digests, output_record
    from server.inputs.resolve import read_source
    from server.serving.workers import load_configured_engine

    fixed, varied = _grid(args)
    cells = cell_count(varied)
    if cells > args.max_cells:
        shape = " x ".join(str(len(values)) for _, values in varied)
        raise CliError(
            f"the grid has {cells} cells ({shape}), more than --max-cells {args.max_cells}: list fewer values, "
            "or raise --max-cells"
        )
    region = _region(args)
    fixed.update(region.model_dump(exclude_none=True))
    settings = settings_from(args)
    sources = {name: getattr(args, name) for name in IMAGE_FIELDS if getattr(args, name) is not None}
    for combination in combinations(varied):  # every cell valid before the first one runs
        _validated({**fixed, **combination}, sources)
    writable_folder(args.out)
    data = {name: read_source(source, name, settings) for name, source in sources.items()}
    images = decode_inputs(data, settings.max_image_pixels)
    RegionMasks(settings).add_mask(images, region)
    engine = load_configured_engine(settings)
    inputs = input_digests(images)

    def encode(image, values: dict, seed: int, engine_name: str) -> bytes:
        fields = _validated(values, sources).model_dump()
        record = output_record(settings.output_metadata, fields, seed, engine_name, inputs)
        return encode_output(image, fields["image_format"], fields["image_quality"], record, settings)

    print(f"{cells} cell(s) to run", file=sys.stderr)
    results = run_sweep(
        engine,
        fixed,
        varied,
        images,
        sources,
        args.out,
        progress=lambda name: print(f"wrote {name}", file=sys.stderr),
        encode=encode,
    )
    sheets = write_sheets(results, varied, args.out)
    index = write_index(results, sheets, args.out)
    print(f"{len(results)} images, {len(sheets)} sheet(s), {index}", file=sys.stderr)
    return 0


def _grid(args: argparse.Namespace) -> tuple[dict, list[tuple[str, list]]]:
    fields = SwapRequest.model_fields
    fixed, varied = {}, []
    for name in getattr(args, "_order", []):
        values = [_typed(name, value, fields[name].annotation) for value in getattr(args, name)]
        if len(values) == 1:
            fixed[name] = values[0]
        else:
            varied.append((name, list(dict.fromkeys(values))))
    return fixed, varied


def _typed(name: str, value: str, annotation) -> object:
    kind = {int: int, float: float, bool: lambda v: v.lower() in ("1", "true", "yes")}.get(annotation)
    if get_origin(annotation) is Literal:
        if value not in get_args(annotation):
            raise CliError(f"{flag(name)}: {value!r} is not one of {', '.join(get_args(annotation))}")
        return value
    try:
        return kind(value) if kind else value
    except ValueError:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise CliError(f"{flag(name)}: each value must be {KIND_NAMES[annotation]} (got {shown!r})") from None


def _region(args: argparse.Namespace) -> Selection:
    """The region selected by --box, --points or --text (none: the cells read --mask)."""
    given = {name: getattr(args, name) for name in SELECTOR_FIELDS if getattr(args, name) is not None}
    try:
        return Selection.model_validate(given)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, flag)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _validated(values: dict, sources: dict[str, str]) -> SwapRequest:
    """The request of one cell, its images those given (a cell that needs an object nobody gave is refused)."""
    try:
        return SwapRequest.model_validate({**values, **dict.fromkeys(sources, "x")})
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, flag)) from None
