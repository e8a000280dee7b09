"""`segswap swap`: one swap offline, the contract's fields as flags, the image written to a file. `segswap erase`:
the same with `mode` erase and no object (nor the fields only an object reads)."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

from pipelines import IMAGE_FIELDS, build_job
from pipelines.job import ERASE
from server.cli.common import (
    FORMAT_BY_SUFFIX,
    CliError,
    add_engine_flags,
    flag,
    format_named_by,
    settings_from,
    writable_file,
)
from server.cli.info import read_record
from server.contract import REGION_FIELDS, SwapRequest, describe_validation_error
from server.experiments.regions import RegionMasks
from server.inputs.decode import decode_inputs
from server.inputs.encode import check_encodable, encode_output
from server.inputs.files import printable
from server.inputs.metadata import NOT_PARAMETERS, input_digests, output_record
from server.inputs.resolve import read_source
from server.serving.workers import load_configured_engine

IMAGE_HINTS = {
    "mask_image": " (or select it with --box, --points or --text)",
    "object_image": f" (required unless --mode is {ERASE})",
}
# Not request flags: --base64 is the file's encoding; the model set is --model-set's, an engine flag (the set
# loaded here), so a replay runs the set the command names and warns when the record's engine differs.
ENGINE_CHOSEN = {"base64", "model_set"}
OBJECT_ONLY = {"object_image", "mode", "fashion_strength", "horizontal_repeat", "vertical_repeat"}  # erase: no flag
ERASE_HELP = {  # what the flags an erase keeps mean there
    "subject_strength": "Diffusion engines: how much of the fill the model starts from (1 keeps its colour and "
    "layout and re-draws its detail, 0 repaints the region from the prompt); the composite engine does not read it.",
    "prompt": "Diffusion engines: what to paint in the region (default: a neutral prompt of empty background); "
    "the composite engine does not read it.",
}


def add_swap_command(subparsers) -> None:
    parser = subparsers.add_parser("swap", help="run one swap offline and write the image")
    _add_request_flags(parser, skip=set())
    parser.set_defaults(handler=run_swap)


def add_erase_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "erase",
        help="remove what the mask covers and write the image (swap --mode erase: no object)",
        description="Composite engine: the region filled from its surroundings (it reads the mask, --growmask and "
        "--seed). Diffusion engines: inpainted without an object, from --prompt, else a neutral prompt of empty "
        "background.",
    )
    _add_request_flags(parser, skip=OBJECT_ONLY, helps=ERASE_HELP)
    parser.set_defaults(handler=run_swap, mode=ERASE)


def _add_request_flags(parser: argparse.ArgumentParser, skip: set[str], helps: dict[str, str] | None = None) -> None:
    """The contract's fields as flags (but `skip`; `helps` overrides descriptions), --replay, -o and the engine
    flags."""
    fields = SwapRequest.model_fields
    for name in IMAGE_FIELDS:
        if name in skip:
            continue
        what = fields[name].description.split(":")[0]
        parser.add_argument(
            flag(name),
            dest=name,
            required=name == "main_image",
            help=f"{what}: a path or URL{IMAGE_HINTS.get(name, '')}",
        )
    for name, field in fields.items():
        if name in IMAGE_FIELDS or name in skip or name in ENGINE_CHOSEN:
            continue
        kind = {int: int, float: float}.get(field.annotation, str)
        choices = f"; one of {', '.join(get_args(field.annotation))}" if get_origin(field.annotation) is Literal else ""
        described = (helps or {}).get(name, field.description)
        parser.add_argument(flag(name), dest=name, type=kind, help=f"{described} (default {field.default}{choices})")
    parser.add_argument("--base64", action="store_true", help="write the image as base64 text instead of bytes")
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="OUTPUT",
        help="run the swap that made OUTPUT again: its recorded parameters and seed (flags given here win); "
        "warns when an input's sha256 or the engine differs from the record",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the result")
    add_engine_flags(parser)


def run_swap(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    writable_file(args.output)
    recorded = read_record(args.replay) if args.replay else None
    request = _validated_request(args, recorded["parameters"] if recorded else {})
    sent = [name for name in IMAGE_FIELDS if getattr(request, name) is not None]  # an erase reads no object
    images = decode_inputs(
        {name: read_source(getattr(request, name), name, settings) for name in sent}, settings.max_image_pixels
    )
    check_encodable(images["main_image"].size, request.image_format)
    segmenter = RegionMasks(settings).add_mask(images, request)
    if segmenter is not None:
        print(f"selected the region by {request.selector().kind} ({segmenter})", file=sys.stderr)
    job = build_job(request.model_dump(), images)
    inputs = input_digests(images)

    engine = load_configured_engine(settings)
    if recorded is not None:
        _warn_where_it_differs(recorded, inputs, engine.name)
    start = time.perf_counter()
    with ProgressBar() as progress:
        image = engine.swap(job, progress=progress)
    seconds = time.perf_counter() - start
    record = output_record(settings.output_metadata, request.model_dump(), job.seed, engine.name, inputs)
    data = encode_output(image, request.image_format, request.image_quality, record, settings)
    args.output.write_bytes(base64.b64encode(data) if args.base64 else data)
    print(
        f"wrote {args.output} ({image.width}x{image.height} {request.image_format}, engine {engine.name}, "
        f"seed {job.seed}, {seconds:.2f} s)",
        file=sys.stderr,
    )
    return 0


def _validated_request(args: argparse.Namespace, recorded: dict) -> SwapRequest:
    given = {
        name: getattr(args, name)
        for name in SwapRequest.model_fields
        if getattr(args, name, None) is not None and name not in ENGINE_CHOSEN
    }
    if set(given) & set(REGION_FIELDS):  # a region given here replaces the recorded one, whichever kind it was
        recorded = {name: value for name, value in recorded.items() if name not in REGION_FIELDS}
    replayable = set(SwapRequest.model_fields) - NOT_PARAMETERS - ENGINE_CHOSEN  # images come from the flags only
    values = {name: value for name, value in recorded.items() if name in replayable} | given
    values["base64"] = args.base64
    named = None if args.base64 else format_named_by(args.output)  # base64 is text: any name
    if named is not None:  # the file's name wins over a recorded format; a format given here must agree with it
        chosen = given.get("image_format", named)
        if chosen != named and chosen in FORMAT_BY_SUFFIX.values():
            raise CliError(f"-o: a {printable(args.output.suffix)} name for a {chosen} image; name it for its format")
        values["image_format"] = chosen
    values.setdefault("image_format", "png")
    try:
        return SwapRequest.model_validate(values)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, flag)) from None


def _warn_where_it_differs(recorded: dict, inputs: dict[str, str], engine: str) -> None:
    """A replay gives the same bytes only from the same inputs on the same engine: say where that fails."""
    for field, sha256 in sorted((recorded.get("inputs") or {}).items()):
        if inputs.get(field) != sha256:
            now = f"sha256 {inputs[field]}" if field in inputs else "not given"
            print(f"warning: {flag(field)} differs from the recorded input ({now}, recorded {sha256})", file=sys.stderr)
    if recorded.get("engine") != engine:
        print(f"warning: the engine is {engine}, the record's is {recorded.get('engine')}", file=sys.stderr)


class ProgressBar:
    """A tqdm bar driven by the engine's progress(done, total) calls; silent for one-step engines."""

    def __enter__(self):
        self._bar = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", file=sys.stderr)
        self._bar.update(done - self._bar.n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
