"""The `segswap` command: serve the API, or run one swap offline.

    segswap serve [--host H] [--port P] [--engine auto|composite|diffusion] [--weights DIR]
    segswap swap --main A --mask B --object C [contract fields as flags] -o OUT
    segswap weights list | download SET | verify SET | make-tiny --out DIR
    segswap keys add ID [--rate N] [--credits N] [--endpoint PATH] | list | revoke ID | credit ID N
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from pipelines import InvalidInput, SegswapError, SwapJob, require_model_set, resolve_seed

from .app import load_configured_engine
from .cli_bench import add_bench_command
from .cli_keys import add_keys_commands
from .cli_weights import add_weights_commands
from .contract import IMAGE_FIELDS, SwapRequest, describe_validation_error
from .encode import encode_image
from .errors import ApiError
from .fetch import fetch_url
from .images import decode_image, is_url
from .settings import Settings

log = logging.getLogger("segswap")

FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


class CliError(Exception):
    """A one-line message for the user; the CLI exits with status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except InvalidInput as exc:
        print(f"segswap: error: {exc.describe(_flag(exc.field) if exc.field else None)}", file=sys.stderr)
        return 2
    except (CliError, ApiError, SegswapError) as exc:
        print(f"segswap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segswap", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands.add_parser("serve", help="serve the HTTP API"))
    _add_swap(commands.add_parser("swap", help="run one swap offline and write the image"))
    add_weights_commands(commands.add_parser("weights", help="list, download, verify or make model sets"))
    add_keys_commands(commands.add_parser("keys", help="add, list, revoke API keys; set credit balances"))
    add_bench_command(commands)
    return parser


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=["auto", "composite", "diffusion"], help="engine (default: auto)")
    parser.add_argument("--weights", type=Path, help="folder holding model sets (default: SEGSWAP_WEIGHTS_DIR or weights/)")
    parser.add_argument("--model-set", choices=["sdxl", "sd15"], help="model set to load (default: sdxl, else sd15)")
    parser.add_argument("--ip-adapter", choices=["plus", "plain"], help="IP-Adapter variant (default: plus)")
    parser.add_argument("--device", help="torch device: auto, cuda, cuda:1, mps, cpu (default: auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="model dtype (default: auto)")


def _add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    _add_engine_flags(parser)
    parser.set_defaults(handler=run_serve)


def _add_swap(parser: argparse.ArgumentParser) -> None:
    fields = SwapRequest.model_fields
    for name in IMAGE_FIELDS:
        flag = "--" + name.removesuffix("_image")
        parser.add_argument(flag, dest=name, required=True, help=f"{fields[name].description.split(':')[0]}: a path or URL")
    for name, field in fields.items():
        if name in IMAGE_FIELDS or name == "base64":
            continue
        kind = {int: int, float: float}.get(field.annotation, str)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=f"{field.description} (default {field.default})")
    parser.add_argument("--base64", action="store_true", help="write the image as base64 text instead of bytes")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the result")
    _add_engine_flags(parser)
    parser.set_defaults(handler=run_swap)


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides = {"engine": args.engine, "weights_dir": args.weights, "model_set": args.model_set,
                 "ip_adapter": args.ip_adapter, "device": args.device, "dtype": args.dtype, **extra}
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise CliError(exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")) from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .access import configure_json_logging
    from .app import create_app
    from .lifecycle import DrainingServer

    settings = _settings(args, host=args.host, port=args.port)
    configure_json_logging(settings.log_level)
    if not settings.auth_required:
        log.warning("no API keys configured (SEGSWAP_API_KEYS): serving WITHOUT auth, on loopback %s only", settings.host)
    if settings.engine == "diffusion":  # fail before binding when the model set is plainly missing
        require_model_set(settings.weights_dir, settings.model_set, settings.ip_adapter)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.drain_grace_s)
    DrainingServer(config, app.state.lifecycle, app.state.work, settings.drain_grace_s).run()
    return 0


def run_swap(args: argparse.Namespace) -> int:
    settings = _settings(args)
    request = _validated_request(args)
    images = {name: decode_image(_read_source(getattr(args, name), name, settings), name, settings.max_image_pixels) for name in IMAGE_FIELDS}
    params = request.model_dump(exclude={*IMAGE_FIELDS, "image_format", "image_quality", "base64"})
    params["seed"] = resolve_seed(request.seed)
    job = SwapJob(main_image=images["main_image"].convert("RGB"), mask_image=images["mask_image"], object_image=images["object_image"], **params)

    engine = load_configured_engine(settings)
    start = time.perf_counter()
    with ProgressBar() as progress:
        image = engine.swap(job, progress=progress)
    seconds = time.perf_counter() - start
    data = encode_image(image, request.image_format, request.image_quality)
    args.output.write_bytes(base64.b64encode(data) if args.base64 else data)
    print(f"wrote {args.output} ({image.width}x{image.height} {request.image_format}, engine {engine.name}, "
          f"seed {job.seed}, {seconds:.2f} s)", file=sys.stderr)
    return 0


def _validated_request(args: argparse.Namespace) -> SwapRequest:
    values = {name: getattr(args, name) for name in SwapRequest.model_fields if getattr(args, name, None) is not None}
    values["base64"] = args.base64
    if "image_format" not in values:
        values["image_format"] = FORMAT_BY_SUFFIX.get(args.output.suffix.lower(), "png")
    try:
        return SwapRequest.model_validate(values)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc, _flag)) from None


def _flag(field: str) -> str:
    """The CLI's name for a contract field."""
    return "--" + (field.removesuffix("_image") if field in IMAGE_FIELDS else field.replace("_", "-"))


def _read_source(source: str, field: str, settings: Settings) -> bytes:
    if is_url(source):
        return asyncio.run(
            fetch_url(source, field, max_bytes=settings.fetch_max_bytes, timeout_s=settings.fetch_timeout_s, allow=settings.fetch_allow)
        )
    path = Path(source)
    if not path.is_file():
        raise CliError(f"{_flag(field)}: no such file: {source}")
    return path.read_bytes()


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
