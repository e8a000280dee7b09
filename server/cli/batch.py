"""`segswap batch JOBS --out DIR`: many swaps from a JSONL or CSV file, here or on a running server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from server.cli.common import CliError, add_engine_flags, settings_from, writable_folder
from server.inputs.files import printable


def add_batch_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="run the swaps of a JSONL or CSV file (one a line), resumably",
        description="Run one swap per line of JOBS (JSONL objects or CSV with a header; the contract's fields, the "
        "region as mask_image or box, points or text, image fields as paths relative to JOBS or URLs, an optional "
        "`name` of at most 200 characters, not `summary`). Each output is written as NAME.FORMAT with NAME.json (its "
        "parameters); a re-run skips outputs already complete. Exits 1 if a line failed.",
    )
    parser.add_argument("jobs", type=Path, help="the jobs file (.jsonl or .csv)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument("--server", help="send the jobs to this running server (v2) instead of running them here")
    parser.add_argument("--key", help="API key for --server")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs in flight on --server (default 4)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one job may take on --server")
    add_engine_flags(parser)
    parser.set_defaults(handler=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    from server.experiments.batch import Summary, pending, run_local
    from server.experiments.jobs_file import read_jobs
    from server.experiments.outputs import write_summary

    if not args.jobs.is_file():
        raise CliError(f"no such jobs file: {printable(str(args.jobs))}")
    try:
        entries = read_jobs(args.jobs)
    except UnicodeDecodeError:
        raise CliError(f"{printable(str(args.jobs))} is not a UTF-8 text file (JSONL or CSV)") from None
    settings = settings_from(args)  # here too with --server: the size limits of the images read for it
    writable_folder(args.out)
    total = len(pending(entries, args.out, Summary()))
    with _progress_bar(total) as bar:
        if args.server:
            from server.experiments.remote import run_remote

            concurrency = max(1, args.concurrency)
            summary = asyncio.run(
                run_remote(entries, args.server, args.key or "", args.out, concurrency, args.timeout, settings, bar)
            )
        else:
            from server.serving.workers import load_configured_engine

            summary = run_local(entries, load_configured_engine(settings), args.out, settings, progress=bar)
    write_summary(args.out, summary.as_dict())
    print(
        f"done {summary.done}, skipped {summary.skipped}, failed {len(summary.failed)}; "
        f"{summary.images_per_s:.2f} images/s over {summary.seconds:.1f} s",
        file=sys.stderr,
    )
    for name, reason in summary.failed:
        print(f"  failed {name}: {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


class _progress_bar:
    """A tqdm bar with ETA over the jobs to run, advanced once per finished job."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        from tqdm import tqdm

        self._bar = tqdm(total=self.total, unit="image", file=sys.stderr, disable=self.total == 0)
        return lambda entry: self._bar.update(1)

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
