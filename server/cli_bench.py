"""`segswap bench`: the engine against plain diffusers (the code is bench/engine_bench.py, in the source tree)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time the engine against plain diffusers on the same inputs (JSON)",
        description="Time the diffusion engine against a plain diffusers inpainting + IP-Adapter pipeline, "
        "same inputs, same process, alternating; print JSON. Full-size random-weight models on CUDA, tiny ones elsewhere.",
    )
    _engine_bench().add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from .cli import CliError

    try:
        report = _engine_bench().run(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


def _engine_bench():
    """bench/ lives in the source tree, not in the installed packages: import it from the checkout."""
    try:
        from bench import engine_bench
    except ImportError:
        if not (REPO / "bench" / "engine_bench.py").is_file():
            return _Missing()
        sys.path.insert(0, str(REPO))
        from bench import engine_bench
    return engine_bench


class _Missing:
    """Stands in for bench/engine_bench.py where the package was installed without the source tree."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER)

    @staticmethod
    def run(args: argparse.Namespace) -> dict:
        raise ValueError("segswap bench runs from a source checkout (bench/ is not installed): "
                         "clone the repository and install it with scripts/install.sh")
