"""`segswap bench`: the engine against plain diffusers (the benchmark is server/benchmark/engine_bench.py)."""

from __future__ import annotations

import argparse
import json

from server.benchmark import engine_bench
from server.cli.common import CliError


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time the engine against plain diffusers on the same inputs (JSON)",
        description="Time the diffusion engine against a plain diffusers inpainting + IP-Adapter pipeline, "
        "same inputs, same process, alternating; print JSON. "
        "Full-size random-weight models on CUDA, tiny ones elsewhere.",
    )
    engine_bench.add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    try:
        report = engine_bench.run(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0
