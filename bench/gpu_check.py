"""The GPU check: every figure the fast path needs from a GPU, from one command, as one JSON.

    bench/gpu_check.sh [--tiny] [--wheels DIR] [--out FILE] [--budget-s S]   (installs, then runs this)
    python -m bench.gpu_check [--tiny] [--out FILE] [--budget-s S]

For sdxl, flux2-klein and sd15 (in that order: the most asked-for first), one `segswap bench` each, in its own
process: full-size random-weight sets built on the spot (nothing downloaded), plain diffusers vs our eager path
(no torch.compile) vs our fast path in one alternation, and the ablations of the ways to fewer model evaluations
(few-step mode on the SD sets, the step cache on all three). After each set the JSON is written again, so a run
cut short still leaves what it measured. A set that would start with less than MIN_START_S of the budget left is
skipped, and one that fails is recorded with the end of its log; the others still run.

--tiny runs the very same commands on the tiny sets on the CPU: that is what CI runs (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

PLAN = {  # each set: its native side (the full-size bench's scene), and the ablations that apply to it
    "sdxl": (1024, "few_step,step_cache,channels_last,vae_upcast,fp8"),
    "flux2-klein": (1024, "step_cache,fp8"),  # step-distilled already: few-step mode is its native 4 steps
    "sd15": (512, "few_step,step_cache"),
}
COMMON = ["--repeats", "2", "--warmup", "1", "--crop-main", "0", "--with-eager", "--throughput", "4"]
FULL = ["--full", "--steps", "30"]
TINY = ["--tiny", "--device", "cpu", "--steps", "6", "--repeats", "1"]  # the later --repeats wins
DEFAULT_BUDGET_S = 470  # the check must end within 8 minutes on an H100, installing included
MIN_START_S = 45
LOG_TAIL = 3000
RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("diffusers", "transformers", "huggingface-hub", "peft", "accelerate", "torchao", "safetensors")


def bench_command(arch: str, tiny: bool, out: Path, models: Path) -> list[str]:
    side, ablate = PLAN[arch]
    sizing = TINY if tiny else [*FULL, "--size", str(side)]
    command = [sys.executable, "-m", "server.benchmark.engine_bench", "--arch", arch, *COMMON, *sizing]
    return [*command, "--ablate", ablate, "--work-dir", str(models), "--out", str(out)]


def summarise(report: dict) -> dict:
    """The figures a closing note quotes, from one set's bench report."""
    row = {
        "processed_size": report.get("processed_size"),
        "steps": report.get("steps"),
        "fast_s": report["ours"]["s_per_image_median"],
        "eager_s": report.get("ours_eager", {}).get("s_per_image_median"),
        "diffusers_s": report["baseline"]["s_per_image_median"],  # plain diffusers on the same work
        "speedup_fast_vs_diffusers": report.get("speedup_vs_baseline"),
        "diffusers_bare_s": report.get("baseline_bare", {}).get("s_per_image_median"),  # whole image, as documented
        "speedup_fast_vs_diffusers_bare": report.get("speedup_vs_baseline_bare"),
        "speedup_fast_vs_eager": report.get("speedup_fast_over_eager"),
        "fast_peak_memory_bytes": report["ours"].get("peak_memory_bytes"),
        "fast_over_floor": report.get("compute", {}).get("ours_over_floor"),
        "worker_in_stages_s_per_image": report.get("throughput", {}).get("in_stages_s_per_image"),
        "worker_stages_speedup": report.get("throughput", {}).get("speedup"),
    }
    for ablation in report.get("ablation", []):
        if "ratio_flipped_over_default" in ablation:
            row[f"{ablation['piece']}_s"] = ablation["s_per_image_median"]
            row[f"{ablation['piece']}_over_default"] = ablation["ratio_flipped_over_default"]
            row[f"{ablation['piece']}_steps"] = ablation.get("steps")
            row[f"{ablation['piece']}_psnr_db"] = ablation.get("psnr_vs_default_db")
        elif "skipped" in ablation:
            row[f"{ablation['piece']}_skipped"] = ablation["skipped"]
    return row


def run_check(tiny: bool, budget_s: float, out: Path) -> dict:
    start = time.monotonic()
    report: dict = {
        "check": "segswap GPU check: plain diffusers vs our eager path vs our fast path, few-step and step cache",
        "models": "tiny (CPU)" if tiny else "full-size random weights",
        "machine": _machine(),
        "budget_s": budget_s,
        "runs": {},
        "summary": {},
    }
    with tempfile.TemporaryDirectory(prefix="segswap-gpu-check-") as work:
        for arch in PLAN:
            left = budget_s - (time.monotonic() - start)
            if left < MIN_START_S:
                report["runs"][arch] = {"skipped": f"{left:.0f} s of the budget left"}
                continue
            models = Path(work) / "models"  # emptied after each set: a full FLUX.2 set alone is 16 GB of disk
            report["runs"][arch] = _run_one(bench_command(arch, tiny, Path(work) / f"{arch}.json", models), left)
            shutil.rmtree(models, ignore_errors=True)
            if "report" in report["runs"][arch]:
                report["summary"][arch] = summarise(report["runs"][arch]["report"])
            report["seconds"] = round(time.monotonic() - start, 1)
            out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _run_one(command: list[str], timeout_s: float) -> dict:
    out = Path(command[command.index("--out") + 1])
    print(f"gpu_check: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        log = (expired.stderr or b"")[-LOG_TAIL:]
        return {"error": f"timed out after {timeout_s:.0f} s", "log_tail": _text(log)}
    seconds = round(time.monotonic() - began, 1)
    if done.returncode != 0 or not out.is_file():
        return {"error": f"exit status {done.returncode}", "seconds": seconds, "log_tail": done.stderr[-LOG_TAIL:]}
    return {"seconds": seconds, "report": json.loads(out.read_text())}


def _text(data: bytes | str) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _machine() -> dict:
    import torch

    machine = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
        machine["cuda"] = torch.version.cuda
    return machine


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def default_out(tiny: bool) -> Path:
    """Where the JSON goes: bench/results/<date>-<gpu>.json for a GPU run (the file to commit), else
    gpu-check.json."""
    import torch

    if tiny or not torch.cuda.is_available():
        return Path("gpu-check.json")
    gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return RESULTS / f"{time.strftime('%Y-%m-%d')}-{gpu}.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sets on the CPU (what CI runs)")
    parser.add_argument(
        "--out", type=Path, help="the JSON (default: bench/results/<date>-<gpu>.json on a GPU, else gpu-check.json)"
    )
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for all the sets")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: writing {out}", file=sys.stderr, flush=True)
    report = run_check(args.tiny, args.budget_s, out)
    print(json.dumps(report["summary"], indent=2))
    return report


if __name__ == "__main__":
    main()
