"""`segswap info IMAGE`: what made an output, as the file itself carries it: its record (server/inputs/metadata.py),
its C2PA content credentials and SDXL's invisible watermark, where present (server/inputs/provenance.py)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from server.cli.common import CliError
from server.inputs import metadata
from server.inputs.files import UnreadableFile, printable, read_file
from server.settings import Settings

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_FILE_BYTES = 512 * 2**20  # far above any output (the server's pixel cap), far below what would hurt


def add_info_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="show what made an output: parameters, inputs, seed, engine; C2PA credentials; watermark"
    )
    parser.add_argument("image", type=Path, help="an image segswap wrote")
    parser.add_argument("--json", action="store_true", help="print everything found as JSON")
    parser.set_defaults(handler=run_info)


def _open(path: Path) -> tuple[bytes, Image.Image]:
    """The file's bytes and the image, its header read but no pixels decoded (the record sits in the header).
    Only a regular file, and at most MAX_FILE_BYTES of it (server/inputs/files.py)."""
    try:
        data = read_file(path, MAX_FILE_BYTES)
        return data, Image.open(io.BytesIO(data))
    except UnreadableFile as exc:
        raise CliError(str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError):  # ValueError: a text chunk past Pillow's limits
        raise CliError(f"{printable(str(path))} is not a readable PNG, JPEG or WEBP image") from None


def read_record(path: Path) -> dict:
    """The record in `path`; a CliError when the file is not an image or carries none."""
    record = metadata.read(_open(path)[1])
    if record is None:
        raise CliError(
            f"{printable(str(path))} carries no segswap record (not written by segswap, or with output metadata off)"
        )
    return record


def inspect(path: Path) -> dict:
    """Everything the file carries: record, C2PA credentials, watermark (None where absent or not checkable)."""
    data, image = _open(path)
    found: dict = {"record": metadata.read(image), "c2pa": None, "watermark_bits": None}
    try:
        from server.inputs.provenance import credentials, watermark_bits
    except ImportError:
        return found
    if image.format in FORMATS:
        try:
            found["c2pa"] = credentials(data, FORMATS[image.format])
        except ImportError:  # c2pa-python not installed: nothing to read credentials with
            pass
    if image.width * image.height > Settings.model_fields["max_image_pixels"].default:
        return found  # decoding it to look for a watermark would take more memory than the server allows
    try:
        image.load()
        found["watermark_bits"] = watermark_bits(image)
    except ImportError:  # invisible-watermark not installed
        pass
    except (OSError, ValueError):  # truncated or corrupt pixels: the header's record was still read
        pass
    return found


def run_info(args: argparse.Namespace) -> int:
    from server.inputs.provenance import WATERMARK_BITS, WATERMARK_FOUND

    found = inspect(args.image)
    bits = found["watermark_bits"]
    watermarked = bits is not None and bits >= WATERMARK_FOUND
    if found["record"] is None and found["c2pa"] is None and not watermarked:
        raise CliError(f"{printable(str(args.image))} carries no segswap record, C2PA credentials or watermark")
    if args.json:
        print(json.dumps(found | {"watermarked": watermarked}, indent=2, sort_keys=True))  # escapes control chars
        return 0
    if found["record"] is not None:
        _print_record(found["record"])
    if found["c2pa"] is not None:
        _print_credentials(found["c2pa"])
    if bits is not None:
        verdict = "found" if watermarked else "not found"
        _say(f"watermark   {verdict} ({bits}/{len(WATERMARK_BITS)} bits of SDXL's message)")
    return 0


def _print_record(record: dict) -> None:
    _say(f"engine      {record.get('engine')}  (segswap {record.get('segswap')})")
    revisions = record.get("model_revisions")
    if isinstance(revisions, str):  # "unverified local files"
        _say(f"model       {revisions}")
    for repo, revision in (revisions if isinstance(revisions, dict) else {}).items():
        _say(f"model       {repo} @ {revision}")
    if "watermark" in record:
        _say(f"watermark   {record['watermark']} (as written)")
    _say(f"seed        {record.get('seed')}")
    for field, sha256 in (record.get("inputs") or {}).items():
        _say(f"input       {field:13} sha256 {sha256}")
    for name, value in (record.get("parameters") or {}).items():
        if value is not None:
            _say(f"parameter   {name:18} {value}")


def _print_credentials(claim: dict) -> None:
    signer = claim["signer"]
    _say(f"c2pa        signed by {signer.get('common_name')} ({signer.get('issuer')}), {signer.get('alg')}")
    for action in claim["actions"]:
        source = action.get("digitalSourceType", "").rsplit("/", 1)[-1]
        _say(f"c2pa        {action.get('action')}{f' ({source})' if source else ''}")
    if claim["validation"]:
        _say(f"c2pa        validation: {', '.join(claim['validation'])}")


def _say(line: str) -> None:
    """Print a line of what the file carries, its control characters escaped: a crafted record must not clear
    the terminal, set its title or fake other lines."""
    print(printable(line))
