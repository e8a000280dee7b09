"""`segswap bench`: the diffusion engine against plain diffusers, same inputs, same process, alternating.

    segswap bench [--arch sdxl|sd15|flux2-klein|flux2-klein-base] [--tiny|--full] [--size PX] [--steps N] [--repeats N]
                  [--ablate [PIECE,...]] [--crop-main PX --crop-mask PX] [--out FILE]

Models: with --full (the default on CUDA) the full-size inpainting architectures with random weights,
built from the real configs in server/benchmark/configs/ (full_models.py: same parameter counts and FLOPs as
the real weights, nothing downloaded); with --tiny (the default elsewhere) the tiny sets of
pipelines/models/tiny.py, so CI runs the very same code; with --weights DIR a model set on disk.

What it measures, printed as one JSON object:
  ours / baseline / baseline_bare
                    seconds per image (median, p90), images/s, peak memory (and `ours_eager` with --with-eager:
                    ours with compilation off, in the same alternation). `ours` is the engine with the fast
                    path the SEGSWAP_* settings give (see pipelines/engines/diffusion/options.py).
                    `baseline` is plain diffusers on the same work, like for like: the pipeline loaded as its
                    documentation shows (AutoPipelineForInpainting + load_ip_adapter; Flux2KleinInpaintPipeline),
                    with diffusers' own processors and nothing compiled or cached, handed what ours hands its
                    pipeline: the same placement (the object through the same cut-out), crop, mask, start
                    (strength, schedule length, timesteps or sigmas), scheduler, IP-Adapter scales, reference
                    image and IP-Adapter mask (diffusers' full-size form, which it resizes in every layer), then
                    the same colour match and paste. `baseline_bare` is diffusers as its documentation shows it
                    on the whole image: pipe(prompt, image, mask_image, ip_adapter_image | image_reference) at
                    strength 1 with the object image as given, for reference. The distilled klein set runs its
                    4 steps in all, whatever --steps says. Same scene (size x size, a centred ellipse mask
                    half its side), object image, prompt, steps, guidance and seed. Warm-up first, then
                    they alternate (ABCCBA) so drift hits all alike. The same object and prompt repeat,
                    as in catalogue work: after the first image ours takes its embeddings from its cache.
  request_stages    where a served request's time goes: fetch (the three images over loopback HTTP
                    through server.inputs.fetch), decode (server.inputs.decode), mask_ops (mask, crop, tiling, paste),
                    embeds and model (the diffusion model), encode (server.inputs.encode, PNG); and the share
                    outside the model.
  compute           TFLOP per image (counted on one run at ours' processed size), achieved TFLOP/s,
                    and, on CUDA, the floor at --peak-tflops and ours' ratio to it.
  crop_and_stitch   a small mask in a large image (--crop-main, --crop-mask): ours processes a crop at
                    the model's native size, the bare baseline the whole image.
  throughput        (--throughput N) N jobs through a server worker one at a time, then in stages (the next job
                    prepared and the last finished on helper threads while the model runs).
  ablation          (--ablate) each fast-path piece, and each way to fewer model evaluations (few_step: the
                    LCM-LoRA at 4-8 steps without guidance; step_cache: DeepCache / TaylorSeer), flipped
                    from its default, alternating with the default; with the steps each ran.
  memory            bytes of each model component in ours (what a low-memory setting has to hold), and of the
                    set's weight files on disk (what the GPU holds in the files' dtype).
Where each part lives: scene.py (the inputs), baselines.py (plain diffusers), timing.py (the probe, alternation,
stages and figures), compute.py, throughput.py, ablation.py (their rows); this module runs them and writes the report.
Peak memory: on CUDA, that pipeline's own weights plus the peak torch.cuda.max_memory_allocated rose
during its calls (both pipelines are resident in one process); on CPU, the process's peak RSS for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.models.few_step import LORA_SETS
from pipelines.models.model_sets import SETS, ModelSet, model_set_at, require_model_set
from server.benchmark.ablation import FLUX2_PIECES, PIECES, ablation
from server.benchmark.baselines import DiffusersBaseline, Flux2Baseline, LikeForLike
from server.benchmark.compute import compute, fast_path, memory, processed_size, weight_files_bytes
from server.benchmark.scene import NEGATIVE_PROMPT, PROMPT, ImageServer, sample_inputs
from server.benchmark.throughput import throughput_row
from server.benchmark.timing import Probe, alternate, log, ratio, request_stages, rounded, served_request, summary

TINY_DEFAULT_STEPS = 4


FULL_DEFAULT_STEPS = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=list(SETS), default="sdxl", help="model set to bench (default sdxl)")
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--tiny",
        dest="models",
        action="store_const",
        const="tiny",
        help="tiny random-weight sets (default without CUDA)",
    )
    models.add_argument(
        "--full",
        dest="models",
        action="store_const",
        const="full",
        help="full-size architectures with random weights from server/benchmark/configs (default on CUDA)",
    )
    models.add_argument("--weights", type=Path, help="bench a model set on disk instead (a diffusers-format set)")
    parser.add_argument("--size", type=int, help="side of the square scene in px (default: the model's native side)")
    parser.add_argument(
        "--steps", type=int, help=f"denoising steps (default {FULL_DEFAULT_STEPS}; {TINY_DEFAULT_STEPS} with --tiny)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed images per pipeline (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images per pipeline first (default 1)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale (default 7.5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ip-adapter", choices=["plus", "plain"], default="plus", help="IP-Adapter variant (default plus)"
    )
    parser.add_argument("--device", default="auto", help="torch device (default auto)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    parser.add_argument(
        "--ablate",
        nargs="?",
        const=",".join(PIECES),
        default="",
        help=f"also time each fast-path piece flipped from its default; all or a comma list of {', '.join(PIECES)}",
    )
    parser.add_argument(
        "--crop-main", type=int, default=2048, help="crop-and-stitch row: scene side in px (0: skip the row)"
    )
    parser.add_argument("--crop-mask", type=int, default=200, help="crop-and-stitch row: mask side in px")
    parser.add_argument(
        "--crop-repeats", type=int, help="timed images per pipeline in that row (default min(repeats, 2))"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="device's practical peak for the floor (default: 790 on H100/H200)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where model sets are written (default: temporary for --tiny, ~/.cache/segswap/bench for --full, reused)",
    )
    parser.add_argument(
        "--with-eager",
        action="store_true",
        help="also time ours without torch.compile (the eager path) in the same alternation",
    )
    parser.add_argument(
        "--throughput",
        type=int,
        default=0,
        help="also time N jobs one after another against N through a worker that prepares the next and finishes "
        "the last while the model runs (0: skip the row)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")


def run(args: argparse.Namespace) -> dict:
    import logging

    import torch

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per fetched image otherwise

    from pipelines.engines.selection import diffusion_engine
    from pipelines.torch_runtime import pick_device
    from server.settings import Settings

    device, dtype = pick_device(args.device, args.dtype)
    models = args.models or ("weights" if args.weights else "full" if device.type == "cuda" else "tiny")
    steps = args.steps or (TINY_DEFAULT_STEPS if models == "tiny" else FULL_DEFAULT_STEPS)
    known = FLUX2_PIECES if SETS[args.arch] == "flux2" else PIECES
    pieces = [piece.strip() for piece in (args.ablate or "").split(",") if piece.strip()]
    if args.ablate == ",".join(PIECES):  # a bare --ablate: every piece that applies to this set
        pieces = list(known)
    unknown = [piece for piece in pieces if piece not in known]
    if unknown:
        raise ValueError(f"--ablate: unknown piece(s) {', '.join(unknown)} for {args.arch}; known: {', '.join(known)}")
    temporary = None
    try:
        if models == "weights" or args.weights:
            model_set = require_model_set(args.weights, args.arch, args.ip_adapter)
            models = f"weights:{model_set.folder}"
        elif models == "tiny":
            from pipelines.models.tiny import make_tiny

            work = args.work_dir or Path(temporary := tempfile.mkdtemp(prefix="segswap-bench-"))
            log(f"writing tiny {args.arch} set in {work}")
            lora = (LORA_SETS[SETS[args.arch]],) if SETS[args.arch] in LORA_SETS else ()
            model_set = model_set_at(make_tiny(work, sets=(args.arch, *lora))[0], args.ip_adapter)
        else:
            from server.benchmark.full_models import make_full

            work = args.work_dir or Path.home() / ".cache" / "segswap" / "bench"
            log(f"writing (or reusing) full-size {args.arch} set with random weights in {work}")
            model_set = model_set_at(make_full(work, args.arch, args.ip_adapter, dtype), args.ip_adapter)
        settings = Settings(
            host="127.0.0.1"
        )  # the fast path as SEGSWAP_* configures it; only its engine options are read
        options = dataclasses.replace(settings.diffusion_options(str(device)), dtype=str(dtype).removeprefix("torch."))
        return _bench(args, model_set, models, steps, pieces, options, diffusion_engine, torch)
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def _bench(
    args,
    model_set: ModelSet,
    models: str,
    steps: int,
    pieces: list[str],
    options: DiffusionOptions,
    engine_class,
    torch,
) -> dict:
    log(f"loading ours ({model_set.name})")
    ours = engine_class(model_set, options)
    device, dtype = ours.device, ours.dtype
    log("loading the plain diffusers baseline")
    bare = (Flux2Baseline if model_set.arch == "flux2" else DiffusersBaseline)(model_set, device, dtype)
    baseline = LikeForLike(ours, bare)
    size = args.size or ours.native_side
    inputs = sample_inputs(size)
    job = inputs.job(PROMPT, NEGATIVE_PROMPT, steps, args.seed, args.guidance_scale)
    steps = ours.steps_for(job)
    job = dataclasses.replace(job, steps=steps)  # the baseline runs what ours runs

    ours_probe, base_probe, bare_probe, eager_probe = Probe(device), Probe(device), Probe(device), Probe(device)
    eager = None
    if args.with_eager:
        log("loading ours without compilation (the eager path)")
        eager = engine_class(model_set, dataclasses.replace(options, compile=False))
    stage_samples: list[dict[str, float]] = []
    with ImageServer(inputs.encoded()) as server:

        def ours_served() -> float:
            stages, seconds = served_request(ours, server, job, ours_probe)
            stage_samples.append(stages)
            return seconds

        log(f"warm-up ({args.warmup} image(s) each; compiles when compile is on)")
        warm = [ours_served() for _ in range(args.warmup)]
        stage_samples.clear()
        bare_out = None
        for _ in range(args.warmup):
            base_probe.time(lambda: baseline(job))
            _, bare_out = bare_probe.time(lambda: bare(job))
        runs = [
            ours_served,
            lambda: base_probe.time(lambda: baseline(job))[0],
            lambda: bare_probe.time(lambda: bare(job))[0],
        ]
        if eager is not None:
            for _ in range(args.warmup):
                eager_probe.time(lambda: eager.swap(job))
            runs.append(lambda: eager_probe.time(lambda: eager.swap(job))[0])
        log(f"timing {args.repeats} image(s) each at {size}x{size}, {steps} steps, alternating")
        ours_s, base_s, bare_s, *eager_s = alternate(*runs, repeats=args.repeats)

    report: dict = {
        "bench": f"segswap diffusion engine vs plain diffusers ({type(bare.pipe).__name__}): baseline on the same "
        "work (crop, start, masks, reference, stitch), baseline_bare on the whole image as documented",
        "device": _device_name(device, torch),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "models": models,
        "arch": model_set.name,
        "ip_adapter": model_set.variant if model_set.uses_ip_adapter else None,
        "dtype": str(dtype).removeprefix("torch."),
        "size": [size, size],
        "processed_size": list(processed_size(ours, job)),
        "baseline_bare_processed_size": list(bare_out.size) if bare_out is not None else None,
        "steps": steps,
        "guidance_scale": args.guidance_scale,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "fast_path": fast_path(ours),
        "peak_memory_kind": "cuda weights + max_memory_allocated rise" if device.type == "cuda" else "process peak RSS",
        "ours": summary(ours_s, ours_probe.peak_bytes(ours.pipe)) | {"warmup_s": rounded(warm)},
        "baseline": summary(base_s, base_probe.peak_bytes(bare.pipe)),
        "baseline_bare": summary(bare_s, bare_probe.peak_bytes(bare.pipe)),
    }
    report["ratio_ours_over_baseline"] = ratio(
        report["ours"]["s_per_image_median"], report["baseline"]["s_per_image_median"]
    )
    report["speedup_vs_baseline"] = ratio(
        report["baseline"]["s_per_image_median"], report["ours"]["s_per_image_median"]
    )
    report["speedup_vs_baseline_bare"] = ratio(
        report["baseline_bare"]["s_per_image_median"], report["ours"]["s_per_image_median"]
    )
    if eager is not None:
        report["ours_eager"] = summary(eager_s[0], eager_probe.peak_bytes(eager.pipe))
        report["speedup_fast_over_eager"] = ratio(
            report["ours_eager"]["s_per_image_median"], report["ours"]["s_per_image_median"]
        )
        del eager
        gc.collect()
    report["embed_cache"] = {"hits": ours.embeddings.hits, "misses": ours.embeddings.misses}
    report["request_stages"] = request_stages(stage_samples)
    report["compute"] = compute(bare, ours, job, report["ours"]["s_per_image_median"], args.peak_tflops, device, torch)
    report["memory"] = memory(ours, ours_probe) | {"set_weight_files_bytes": weight_files_bytes(model_set)}

    if args.crop_main:
        report["crop_and_stitch"] = crop_row(ours, bare, args, steps, device)
    if args.throughput:
        report["throughput"] = throughput_row(ours, job, args.throughput, Probe(device))
    if pieces:
        report["ablation"] = ablation(ours, model_set, pieces, job, args, engine_class, device, torch)
    return report


def crop_row(ours, baseline: DiffusersBaseline, args, steps: int, device) -> dict:
    size, side = args.crop_main, args.crop_mask
    inputs = sample_inputs(size, mask_side=side, seed=1)
    job = inputs.job(PROMPT, NEGATIVE_PROMPT, steps, args.seed, args.guidance_scale)
    repeats = args.crop_repeats or max(1, min(args.repeats, 2))
    ours_probe, base_probe = Probe(device), Probe(device)
    log(f"crop-and-stitch row: {side}x{side} mask in a {size}x{size} scene, {repeats} image(s) each")
    ours_probe.time(lambda: ours.swap(job))  # a new processing shape: warm it up (compiles once when compile is on)
    # The baseline's output is what it processed (FLUX.2's pipeline shrinks anything above 1 MP).
    _, baseline_out = base_probe.time(lambda: baseline(job))
    ours_s, base_s = alternate(
        lambda: ours_probe.time(lambda: ours.swap(job))[0],
        lambda: base_probe.time(lambda: baseline(job))[0],
        repeats=repeats,
    )
    row = {
        "main_size": [size, size],
        "mask_size": [side, side],
        "processed_size": list(processed_size(ours, job)),
        "baseline_processed_size": list(baseline_out.size),
        "repeats": repeats,
        "ours": summary(ours_s, ours_probe.peak_bytes(ours.pipe)),
        "baseline": summary(base_s, base_probe.peak_bytes(baseline.pipe)),
    }
    row["speedup_vs_baseline"] = ratio(row["baseline"]["s_per_image_median"], row["ours"]["s_per_image_median"])
    return row


def _device_name(device, torch) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.benchmark.engine_bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
