"""The `segswap` command: serve the API, run one swap offline, manage weights and keys, benchmark.

segswap serve [--host H] [--port P] [--engine auto|composite|diffusion] [--weights DIR]
segswap swap --main A (--mask B | --box x0,y0,x1,y1 | --points x,y,1;... | --text T) --object C [fields] -o OUT
segswap swap --replay OUTPUT --main A --mask B --object C -o OUT   (the same swap again, from OUTPUT's record)
segswap erase --main A (--mask B | --box ... | --points ... | --text T) [--prompt P] [fields] -o OUT
segswap mask --main A (--box ... | --points ... | --text ...) -o MASK.png
segswap info OUTPUT
segswap weights list | download SET | verify SET | make-tiny --out DIR
segswap keys add ID [--rate N] [--credits N] [--endpoint PATH] | list | revoke ID | credit ID N
segswap bench [--tiny] [--arch sdxl|sd15|flux2-klein|flux2-klein-base] ...
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from pipelines import InvalidInput, SegswapError
from server.access.keys import KeyFileError
from server.cli.batch import add_batch_command
from server.cli.bench import add_bench_command
from server.cli.common import CliError, flag
from server.cli.eval import add_eval_command
from server.cli.info import add_info_command
from server.cli.keys import add_keys_commands
from server.cli.mask import add_mask_command
from server.cli.models import add_models_command
from server.cli.serve import add_serve_command
from server.cli.swap import add_erase_command, add_swap_command
from server.cli.sweep import add_sweep_command
from server.cli.weights import add_weights_commands
from server.contract import SwapRequest
from server.errors import ServiceError
from server.serving.logs import CurrentStderr


def _log_to_stderr() -> None:
    """As logging.basicConfig, but to the stderr of each run (see CurrentStderr)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_quiet_http_client)
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _quiet_http_client(record: logging.LogRecord) -> bool:
    """httpx logs every request at INFO (five lines an image for `batch --server`): only its warnings here."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] not in ("httpx", "httpcore")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's own usage errors are already one line on stderr (Parser.error)
        return int(exit_.code or 0)
    _log_to_stderr()
    try:
        return args.handler(args)
    except InvalidInput as exc:
        return _error(exc.describe(flag(exc.field) if exc.field else None))
    except (CliError, ServiceError, SegswapError, KeyFileError) as exc:
        return _error(str(exc))
    except ModuleNotFoundError as exc:
        return _error(_missing_module(exc.name or "a module"))
    except BrokenPipeError:  # the reader went away (`segswap keys list | head`): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _error("the output was closed before everything was written")
    except KeyboardInterrupt:
        return 130


FIELD_PREFIX = re.compile(r"field '(?P<field>[a-z_]+)'")

# What `scripts/install.sh --diffusion` adds (the tiny model sets import them at module level).
DIFFUSION_MODULES = {"torch", "diffusers", "transformers", "accelerate", "safetensors", "pipelines.models.tiny"}


def _missing_module(name: str) -> str:
    if name in DIFFUSION_MODULES or name.split(".")[0] in DIFFUSION_MODULES:
        return (
            f"this command needs {name}, which comes with the diffusion install: "
            "scripts/install.sh --diffusion (or pip install 'segswap[diffusion]')"
        )
    return f"the package {name} is missing from this installation; reinstall it with scripts/install.sh"


def _flag_named(message: str) -> str:
    """The inputs room and the contract name a field as the API does (`field 'main_image': ...`); here it is a
    flag (`--main`)."""
    named = FIELD_PREFIX.match(message)
    if named is None or named["field"] not in SwapRequest.model_fields:
        return message
    return flag(named["field"]) + message[named.end() :]


def _error(message: str) -> int:
    print(f"segswap: error: {_flag_named(message)}", file=sys.stderr)
    return 2


class Parser(argparse.ArgumentParser):
    """Usage errors as every other error of the command: one line, `segswap: error: ...`, exit status 2 (the
    subcommands' parsers are of this class too: add_subparsers makes its parsers of its parser's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"segswap: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="segswap", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_command(commands)
    add_swap_command(commands)
    add_erase_command(commands)
    add_mask_command(commands)
    add_info_command(commands)
    add_batch_command(commands)
    add_sweep_command(commands)
    add_weights_commands(commands.add_parser("weights", help="list, download, verify or make model sets"))
    add_keys_commands(commands.add_parser("keys", help="add, list, revoke API keys; set credit balances"))
    add_models_command(commands)
    add_bench_command(commands)
    add_eval_command(commands)
    return parser
