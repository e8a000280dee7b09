"""`segswap info IMAGE`: what made an output, as the file itself carries it (server/inputs/metadata.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from server.cli.common import CliError
from server.inputs import metadata


def add_info_command(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show what made an output: parameters, inputs, seed, engine")
    parser.add_argument("image", type=Path, help="an image segswap wrote")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.set_defaults(handler=run_info)


def read_record(path: Path) -> dict:
    """The record in `path`; a CliError when the file is not an image or carries none."""
    try:
        with Image.open(path) as image:
            record = metadata.read(image)
    except FileNotFoundError:
        raise CliError(f"no such file: {path}") from None
    except (UnidentifiedImageError, OSError):
        raise CliError(f"{path} is not a readable PNG, JPEG or WEBP image") from None
    if record is None:
        raise CliError(f"{path} carries no segswap record (not written by segswap, or with output metadata off)")
    return record


def run_info(args: argparse.Namespace) -> int:
    record = read_record(args.image)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    print(f"engine      {record.get('engine')}  (segswap {record.get('segswap')})")
    for repo, revision in (record.get("model_revisions") or {}).items():
        print(f"model       {repo} @ {revision}")
    print(f"seed        {record.get('seed')}")
    for field, sha256 in (record.get("inputs") or {}).items():
        print(f"input       {field:13} sha256 {sha256}")
    for name, value in (record.get("parameters") or {}).items():
        if value is not None:
            print(f"parameter   {name:18} {value}")
    return 0
