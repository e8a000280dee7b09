"""What the commands share: the CLI's error, the engine flags and settings built from them."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from pipelines import IMAGE_FIELDS
from pipelines.models.model_sets import COMPOSITE, SETS
from server.inputs.files import printable
from server.inputs.provenance import provenance_for
from server.settings import Settings

FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
SETTING_FLAGS = {"weights_dir": "--weights"}  # the settings whose flag is not their name


class CliError(Exception):
    """A one-line message for the user; the CLI exits with status 2."""


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["auto", "composite", "diffusion"], help="engine (default: auto)")
    parser.add_argument(
        "--weights",
        type=Path,
        help="folder holding model sets (default: SEGSWAP_WEIGHTS_DIR, else weights/ in the data directory)",
    )
    parser.add_argument(
        "--model-set",
        metavar="SET[,SET...]",
        help=f"model set to load: {', '.join(SETS)} (default: the first complete one in this order); `serve` "
        f"takes several, comma-separated, the first the default ({COMPOSITE} may be one); the other commands run "
        "the first",
    )
    parser.add_argument("--ip-adapter", choices=["plus", "plain"], help="IP-Adapter variant (default: plus)")
    parser.add_argument(
        "--segmenter", choices=["auto", "grabcut", "sam2"], help="selection by box, points or words (default: auto)"
    )
    parser.add_argument("--device", help="torch device: auto, cuda, cuda:1, mps, cpu (default: auto)")
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="model dtype (default: auto)"
    )
    parser.add_argument(
        "--few-step",
        action="store_const",
        const=True,
        help="SD sets: the LCM-LoRA fused in, 4-8 steps without guidance (needs `segswap weights download sdxl-lcm`)",
    )
    parser.add_argument(
        "--step-cache", action="store_const", const=True, help="reuse slowly changing features between steps"
    )


def settings_from(args: argparse.Namespace, **extra: object) -> Settings:
    """The settings (environment, then these flags); a bad value is a CliError."""
    overrides = {
        "engine": args.engine,
        "weights_dir": args.weights,
        "model_set": args.model_set,
        "ip_adapter": args.ip_adapter,
        "segmenter": args.segmenter,
        "device": args.device,
        "dtype": args.dtype,
        "few_step": getattr(args, "few_step", None),
        "step_cache": getattr(args, "step_cache", None),
        **extra,
    }
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise CliError(_describe_setting_error(exc, given)) from None
    try:
        provenance_for(settings)  # a C2PA certificate that cannot sign: said now, before any work
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return settings


def _describe_setting_error(exc: ValidationError, given: dict[str, object]) -> str:
    """The first problem, named by its flag when one gave the value, else by its environment variable."""
    err = exc.errors(include_url=False)[0]
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a rule across settings: its own sentence
        return message
    name = str(err["loc"][0])
    where = SETTING_FLAGS.get(name, "--" + name.replace("_", "-")) if name in given else f"SEGSWAP_{name.upper()}"
    given_value = err.get("input")
    shown = (
        f" (got {given_value!r})" if isinstance(given_value, int | float | str) and len(str(given_value)) <= 40 else ""
    )
    return f"{where}: {message[0].lower()}{message[1:]}{shown}"


def flag(field: str) -> str:
    """The CLI's name for a contract field."""
    return "--" + (field.removesuffix("_image") if field in IMAGE_FIELDS else field.replace("_", "-"))


def format_named_by(output: Path) -> str | None:
    """The image format `output`'s suffix names, None without a suffix; a suffix that names no format written
    here is refused: PNG bytes under a .gif name mislead every program that opens them."""
    suffix = output.suffix.lower()
    if not suffix:
        return None
    if suffix not in FORMAT_BY_SUFFIX:
        shown = printable(output.suffix)
        raise CliError(f"-o: segswap writes PNG, JPEG or WEBP, not {shown}; name the file .png, .jpg or .webp")
    return FORMAT_BY_SUFFIX[suffix]


def writable_folder(path: Path, label: str = "--out") -> Path:
    """`path`, made if need be and written to once: a folder that cannot take the outputs is said now, in one
    line, not as a traceback after the first image."""
    shown = printable(str(path))
    if path.exists() and not path.is_dir():
        raise CliError(f"{label}: {shown} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise CliError(f"{label}: cannot write to {shown} ({exc.strerror or exc})") from None
    return path


def writable_file(path: Path, label: str = "-o") -> Path:
    """`path`, checked before any work: a file (not a folder) in a folder that exists and takes a new file; said
    now, in one line, not as a traceback once the image is made."""
    shown, folder = printable(str(path)), path.parent
    if path.is_dir():
        raise CliError(f"{label}: {shown} is a folder; name the file to write in it")
    if not folder.is_dir():
        raise CliError(f"{label}: no such folder: {printable(str(folder))}")
    if path.exists() and not os.access(path, os.W_OK):
        raise CliError(f"{label}: cannot write to {shown} (permission denied)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CliError(f"{label}: cannot write to {shown} ({exc.strerror or exc})") from None
    return path
