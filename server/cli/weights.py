"""`segswap weights list|download|verify|make-tiny`: model sets on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.models import weights


def add_weights_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="weights_command", required=True)
    listing = commands.add_parser("list", help="the model sets the manifest names")
    listing.set_defaults(handler=run_list)
    for name, handler, text in [
        ("download", run_download, "download a model set (resumable)"),
        ("verify", run_verify, "check sizes and sha256 of a downloaded set"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument("set", help="model set name, e.g. sdxl or sd15")
        command.add_argument(
            "--weights",
            type=Path,
            help="weights folder (default: SEGSWAP_WEIGHTS_DIR, else weights/ in the data directory)",
        )
        command.set_defaults(handler=handler)
    tiny = commands.add_parser("make-tiny", help="write tiny random-weight model sets (for tests and trials)")
    tiny.add_argument("--out", type=Path, required=True, help="folder to write every set into (sdxl/, sd15/, ...)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--single-file", action="store_true", help="base as one base.safetensors (original key format)")
    tiny.set_defaults(handler=run_make_tiny)


def run_list(args: argparse.Namespace) -> int:
    for row in weights.list_sets(weights.load_manifest()):
        size = f"{row.total_bytes / 1e9:6.1f} GB"
        print(f"{row.name:16} {row.arch:8} {size}  {row.file_count:3} files  {row.description}")
        print(f"{'':16} licence: {row.license}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    with _ByteBar() as bar:
        report = weights.download_set(weights.load_manifest(), args.set, args.weights, progress=bar)
    done = {action: len(report.with_action(action)) for action in ("downloaded", "resumed", "skipped")}
    print(
        f"{args.set}: {done['downloaded']} downloaded, {done['resumed']} resumed, {done['skipped']} already there, "
        f"in {report.set_dir}",
        file=sys.stderr,
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    report = weights.verify_set(weights.load_manifest(), args.set, args.weights)
    for check in report.files:
        print(check.describe())
    verdict = "ok" if report.ok else "usable (some files unverifiable)" if report.usable else "NOT usable"
    print(f"{args.set} in {report.set_dir}: {verdict}", file=sys.stderr)
    return 0 if report.usable else 1


def run_make_tiny(args: argparse.Namespace) -> int:
    from pipelines.models.tiny import make_tiny

    for folder in make_tiny(args.out, seed=args.seed, single_file=args.single_file):
        print(f"wrote {folder}", file=sys.stderr)
    return 0


class _ByteBar:
    """One tqdm bar per file, fed by the downloader's progress(dest, done, total) calls."""

    def __enter__(self) -> _ByteBar:
        self._bar, self._dest = None, None
        return self

    def __call__(self, dest: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if dest != self._dest:
            self._close()
            self._dest = dest
            self._bar = tqdm(total=total, desc=dest, unit="B", unit_scale=True, file=sys.stderr, leave=False)
        self._bar.update(done - self._bar.n)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __exit__(self, *exc: object) -> None:
        self._close()
