"""`segswap mask`: select a region by a box, points or words and write it as a mask (white = selected)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from pipelines.masks import load_segmenter, select_mask
from server.cli.common import CliError, add_engine_flags, flag, format_named_by, settings_from, writable_file
from server.contract import MaskRequest, describe_validation_error
from server.inputs.decode import decode_image
from server.inputs.resolve import read_source


def add_mask_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="select a region by a box, points or words; write the mask",
        description="Select a region of an image and write it as a PNG mask (white = selected), ready for "
        "`segswap swap --mask`. SAM 2 selects when its model set is installed (with OWLv2 for --text), else GrabCut.",
    )
    fields = MaskRequest.model_fields
    parser.add_argument("--main", dest="main_image", required=True, help="the image to select in: a path or URL")
    for name in ("box", "points", "text"):
        parser.add_argument(flag(name), dest=name, help=fields[name].description.removeprefix("Extension: "))
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the mask (PNG)")
    add_engine_flags(parser)
    parser.set_defaults(handler=run_mask)


def run_mask(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    values = {name: getattr(args, name) for name in ("main_image", "box", "points", "text") if getattr(args, name)}
    try:
        request = MaskRequest.model_validate(values)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, flag)) from None
    writable_file(args.output)
    if format_named_by(args.output) not in (None, "png"):
        raise CliError("-o: a mask is written as PNG; name the file .png")
    image = decode_image(
        read_source(request.main_image, "main_image", settings), "main_image", settings.max_image_pixels
    )
    segmenter = load_segmenter(settings.weights_dir, settings.segmenter, settings.device)
    start = time.perf_counter()
    mask = select_mask(image, request.selector(), segmenter)
    mask.save(args.output, format="PNG")
    share = sum(mask.histogram()[128:]) / (mask.width * mask.height)
    print(
        f"wrote {args.output} ({mask.width}x{mask.height}, {share:.1%} selected by {segmenter.name}, "
        f"{time.perf_counter() - start:.2f} s)",
        file=sys.stderr,
    )
    return 0
