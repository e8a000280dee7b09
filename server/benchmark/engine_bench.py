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
Peak memory: on CUDA, that pipeline's own weights plus the peak torch.cuda.max_memory_allocated rose
during its calls (both pipelines are resident in one process); on CPU, the process's peak RSS for both.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines import SwapJob
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.imageops import grow_mask, normalize_mask
from pipelines.models.few_step import LORA_SETS
from pipelines.models.model_sets import SETS, ModelSet, model_set_at, require_model_set

PROMPT = "a red summer dress with a small floral pattern"
NEGATIVE_PROMPT = "blurry, low quality"
PIECES = (
    "sdpa",
    "fuse_qkv",
    "channels_last",
    "compile",
    "embed_cache",
    "dtype",
    "vae_upcast",
    "fp8",
    "few_step",
    "step_cache",
)
FLUX2_PIECES = ("compile", "embed_cache", "dtype", "fp8", "step_cache")  # the others are the UNet's; klein is few-step
# Practical dense bf16 peak of an H100/H200 SXM (the DESIGN's reference: 427 TFLOP in about 0.54 s).
PRACTICAL_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}
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
            _log(f"writing tiny {args.arch} set in {work}")
            lora = (LORA_SETS[SETS[args.arch]],) if SETS[args.arch] in LORA_SETS else ()
            model_set = model_set_at(make_tiny(work, sets=(args.arch, *lora))[0], args.ip_adapter)
        else:
            from server.benchmark.full_models import make_full

            work = args.work_dir or Path.home() / ".cache" / "segswap" / "bench"
            _log(f"writing (or reusing) full-size {args.arch} set with random weights in {work}")
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
    _log(f"loading ours ({model_set.name})")
    ours = engine_class(model_set, options)
    device, dtype = ours.device, ours.dtype
    _log("loading the plain diffusers baseline")
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
        _log("loading ours without compilation (the eager path)")
        eager = engine_class(model_set, dataclasses.replace(options, compile=False))
    stage_samples: list[dict[str, float]] = []
    with ImageServer(inputs.encoded()) as server:

        def ours_served() -> float:
            stages, seconds = served_request(ours, server, job, ours_probe)
            stage_samples.append(stages)
            return seconds

        _log(f"warm-up ({args.warmup} image(s) each; compiles when compile is on)")
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
        _log(f"timing {args.repeats} image(s) each at {size}x{size}, {steps} steps, alternating")
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
        "ours": summary(ours_s, ours_probe.peak_bytes(ours.pipe)) | {"warmup_s": _rounded(warm)},
        "baseline": summary(base_s, base_probe.peak_bytes(bare.pipe)),
        "baseline_bare": summary(bare_s, bare_probe.peak_bytes(bare.pipe)),
    }
    report["ratio_ours_over_baseline"] = _ratio(
        report["ours"]["s_per_image_median"], report["baseline"]["s_per_image_median"]
    )
    report["speedup_vs_baseline"] = _ratio(
        report["baseline"]["s_per_image_median"], report["ours"]["s_per_image_median"]
    )
    report["speedup_vs_baseline_bare"] = _ratio(
        report["baseline_bare"]["s_per_image_median"], report["ours"]["s_per_image_median"]
    )
    if eager is not None:
        report["ours_eager"] = summary(eager_s[0], eager_probe.peak_bytes(eager.pipe))
        report["speedup_fast_over_eager"] = _ratio(
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


# ---------------------------------------------------------------- inputs


@dataclasses.dataclass
class Inputs:
    main: Image.Image
    mask: Image.Image
    object: Image.Image

    def job(self, prompt: str, negative: str, steps: int, seed: int, guidance: float) -> SwapJob:
        return SwapJob(
            main_image=self.main,
            mask_image=self.mask,
            object_image=self.object,
            prompt=prompt,
            negative_prompt=negative,
            steps=steps,
            seed=seed,
            guidance_scale=guidance,
        )

    def encoded(self) -> dict[str, bytes]:
        from server.inputs.encode import encode_image

        return {f"/{name}.png": encode_image(getattr(self, name), "png", 95) for name in ("main", "mask", "object")}


def sample_inputs(size: int, mask_side: int | None = None, seed: int = 0) -> Inputs:
    """A photo-like scene (smooth noise), a centred mask (ellipse half the side, or a mask_side square), an object."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), "RGB").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    grain = rng.integers(-12, 13, (size, size, 3))
    main = Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int16) + grain, 0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    if mask_side:
        low = (size - mask_side) // 2
        ImageDraw.Draw(mask).rectangle((low, low, low + mask_side - 1, low + mask_side - 1), fill=255)
    else:
        ImageDraw.Draw(mask).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    obj = Image.new("RGBA", (384, 512), (0, 0, 0, 0))
    draw = ImageDraw.Draw(obj)
    draw.ellipse((8, 8, 375, 503), fill=(200, 30, 40, 255))
    for y in range(24, 500, 48):
        for x in range(24, 370, 48):
            draw.ellipse((x, y, x + 16, y + 16), fill=(250, 240, 200, 255))
    return Inputs(main, mask, obj)


class ImageServer:
    """Serves the encoded inputs on 127.0.0.1, so fetching goes through server.inputs.fetch as a URL request does."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def __enter__(self) -> ImageServer:
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.get(self.path, b"")
                self.send_response(200 if self.path in files else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------- the two pipelines


class DiffusersBaseline:
    """Plain diffusers, as its documentation shows inpainting with an IP-Adapter: the whole image, no crop."""

    def __init__(self, model_set: ModelSet, device, dtype):
        from diffusers import AutoPipelineForInpainting

        from pipelines.engines.diffusion.engine import only_fp16_variant
        from pipelines.torch_runtime import quiet_libraries

        if model_set.checkpoint is not None:
            raise ValueError(f"{model_set.folder} is a single-file set; the baseline needs a diffusers-format base/")
        quiet_libraries()
        extra: dict = {"variant": "fp16"} if only_fp16_variant(model_set.base) else {}
        if model_set.arch == "sd15":
            extra.update(safety_checker=None, requires_safety_checker=False)
        else:  # the same image work as ours: no watermark, whether invisible-watermark is installed or not
            extra.update(add_watermarker=False)
        pipe = AutoPipelineForInpainting.from_pretrained(
            str(model_set.base), dtype=dtype, local_files_only=True, **extra
        )
        pipe.load_ip_adapter(**model_set.ip_adapter_kwargs(), local_files_only=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.scheduler = pipe, pipe.scheduler

    def __call__(self, job: SwapJob) -> Image.Image:
        import torch

        self.pipe.scheduler = self.scheduler  # the like-for-like row shares this pipeline and sets its own
        self.pipe.set_ip_adapter_scale(1.0)
        width, height = job.main_image.width // 8 * 8, job.main_image.height // 8 * 8
        return self.pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt or None,
            image=job.main_image,
            mask_image=job.mask_image,
            ip_adapter_image=job.object_image.convert("RGB"),
            height=height,
            width=width,
            num_inference_steps=job.steps,
            strength=1.0,  # as ours: every step runs
            guidance_scale=job.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        ).images[0]


class Flux2Baseline:
    """Plain diffusers, as its documentation shows FLUX.2 [klein] inpainting with a reference image: the whole
    image, the object as `image_reference`, no crop."""

    def __init__(self, model_set: ModelSet, device, dtype):
        from diffusers import Flux2KleinInpaintPipeline

        from pipelines.torch_runtime import quiet_libraries

        quiet_libraries()
        pipe = Flux2KleinInpaintPipeline.from_pretrained(str(model_set.base), dtype=dtype, local_files_only=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def __call__(self, job: SwapJob) -> Image.Image:
        import torch

        return self.pipe(
            prompt=job.prompt,
            image=job.main_image,
            mask_image=job.mask_image,
            image_reference=job.object_image.convert("RGB"),
            num_inference_steps=job.steps,
            strength=1.0,  # as ours: every step runs
            guidance_scale=job.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        ).images[0]


class LikeForLike:
    """Plain diffusers on ours' work: the bare baseline's pipeline handed what ours hands its own (the same
    prepare and finish: placement, crop, start, reference; colour match and paste), with raw prompts and
    images instead of cached embeddings, and the IP-Adapter mask in diffusers' own full-size form."""

    def __init__(self, ours, bare):
        self.ours, self.pipe = ours, bare.pipe

    def __call__(self, job: SwapJob) -> Image.Image:
        import torch

        prepared = self.ours.prepare(job)
        arguments = dict(prepared.pipeline_arguments(), prompt=job.prompt)
        if hasattr(self.pipe, "transformer"):  # FLUX.2 [klein]: it guides against "" by itself
            arguments["image_reference"] = prepared.reference
        else:
            self._steer(job, prepared, arguments)
        generated = self.pipe(**arguments, generator=torch.Generator("cpu").manual_seed(job.seed)).images[0]
        return self.ours.finish(job, prepared, generated)

    def _steer(self, job: SwapJob, prepared, arguments: dict) -> None:
        from pipelines.engines.diffusion.conditioning import set_ip_adapter_strengths

        set_ip_adapter_strengths(self.pipe.unet, self.ours.model_set.arch, job.subject_strength, job.fashion_strength)
        self.pipe.scheduler = type(prepared.scheduler).from_config(prepared.scheduler.config)
        arguments.update(negative_prompt=job.negative_prompt or None, ip_adapter_image=prepared.reference)
        masks = diffusers_ip_masks(prepared.crop.repainted, self.pipe._execution_device)
        if masks is not None:
            arguments["cross_attention_kwargs"] = {"ip_adapter_masks": masks}


def diffusers_ip_masks(mask: np.ndarray, device) -> list | None:
    """The repainted region as diffusers' IPAdapterMaskProcessor makes an IP-Adapter mask; None where its
    per-layer downsampling would divide by zero (fewer deepest-layer tokens than the crop's width / height)."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    height, width = mask.shape
    if math.ceil(width / 64) * math.ceil(height / 64) < width / height:
        return None
    picture = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return [IPAdapterMaskProcessor().preprocess([picture], height=height, width=width).to(device)]


class Probe:
    """Times a call (synchronising CUDA) and tracks the rise of CUDA's allocated-memory peak during it."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.activation_peak = 0

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, fn: Callable):
        cuda = self.torch.cuda
        self.sync()
        if self.cuda:
            base = cuda.memory_allocated(self.device)
            cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        out = fn()
        self.sync()
        seconds = time.perf_counter() - start
        if self.cuda:
            self.activation_peak = max(self.activation_peak, cuda.max_memory_allocated(self.device) - base)
        return seconds, out

    def peak_bytes(self, pipe) -> int | None:
        if self.cuda:
            return weights_bytes(pipe, "cuda") + self.activation_peak
        return peak_rss_bytes()


def served_request(engine, server: ImageServer, job: SwapJob, probe: Probe) -> tuple[dict[str, float], float]:
    """One request as the server runs it for URL inputs: fetch, decode, swap, encode; seconds by stage."""
    from server.inputs.decode import decode_image
    from server.inputs.encode import encode_image
    from server.inputs.fetch import fetch_url

    fields = {"main_image": "/main.png", "mask_image": "/mask.png", "object_image": "/object.png"}

    async def fetch_all() -> list[bytes]:
        return await asyncio.gather(
            *(
                fetch_url(server.url + path, field, max_bytes=64 * 1024 * 1024, timeout_s=30, allow=["127.0.0.1"])
                for field, path in fields.items()
            )
        )

    start = time.perf_counter()
    bodies = dict(zip(fields, asyncio.run(fetch_all()), strict=True))
    fetched = time.perf_counter()
    images = {field: decode_image(body, field, 400_000_000) for field, body in bodies.items()}
    decoded = time.perf_counter()
    served_job = dataclasses.replace(
        job,
        main_image=images["main_image"].convert("RGB"),
        mask_image=images["mask_image"],
        object_image=images["object_image"],
    )
    seconds, image = probe.time(lambda: engine.swap(served_job))
    encode_start = time.perf_counter()
    encode_image(image, "png", 95)
    end = time.perf_counter()
    stages = {
        "fetch_s": fetched - start,
        "decode_s": decoded - fetched,
        **engine.last_timings,
        "encode_s": end - encode_start,
    }
    return stages, seconds


def alternate(*runs: Callable[[], float], repeats: int) -> list[list[float]]:
    """Run each `repeats` times, in turn and every other round in reverse (ABBA, ABCCBA) so that drift hits all
    alike; each returns its own seconds."""
    samples: list[list[float]] = [[] for _ in runs]
    order = list(range(len(runs)))
    for index in range(repeats):
        for which in order if index % 2 == 0 else order[::-1]:
            samples[which].append(runs[which]())
    return samples


# ---------------------------------------------------------------- rows


def crop_row(ours, baseline: DiffusersBaseline, args, steps: int, device) -> dict:
    size, side = args.crop_main, args.crop_mask
    inputs = sample_inputs(size, mask_side=side, seed=1)
    job = inputs.job(PROMPT, NEGATIVE_PROMPT, steps, args.seed, args.guidance_scale)
    repeats = args.crop_repeats or max(1, min(args.repeats, 2))
    ours_probe, base_probe = Probe(device), Probe(device)
    _log(f"crop-and-stitch row: {side}x{side} mask in a {size}x{size} scene, {repeats} image(s) each")
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
    row["speedup_vs_baseline"] = _ratio(row["baseline"]["s_per_image_median"], row["ours"]["s_per_image_median"])
    return row


def throughput_row(engine, job: SwapJob, count: int, probe: Probe) -> dict:
    """`count` jobs (the same scene, other seeds) through a server worker twice: one at a time (the engine's
    swap), then in stages, the worker preparing the next job and finishing the last on helper threads while the
    model runs. Both run on a worker thread, as in the server (on a CPU, torch called from a second thread
    alongside the first's thread pool is much slower, whichever way the jobs go)."""
    jobs = [dataclasses.replace(job, seed=job.seed + index) for index in range(count)]
    one_at_a_time = probe.time(lambda: _through_a_worker(OneAtATime(engine), jobs))[0]
    in_stages = probe.time(lambda: _through_a_worker(engine, jobs))[0]
    return {
        "jobs": count,
        "one_at_a_time_s_per_image": _sig(one_at_a_time / count),
        "in_stages_s_per_image": _sig(in_stages / count),
        "speedup": _ratio(one_at_a_time, in_stages),
    }


class OneAtATime:
    """An engine with only its swap: a worker runs its jobs one after another."""

    def __init__(self, engine):
        self.engine, self.name = engine, engine.name

    def swap(self, job: SwapJob, progress=None) -> Image.Image:
        return self.engine.swap(job, progress)


def _through_a_worker(engine, jobs: list[SwapJob]) -> list:
    from server.serving.work_queue import WorkQueue

    work = WorkQueue(len(jobs))

    async def served() -> list:
        tickets = [work.submit(one, time.monotonic() + 3600) for one in jobs]
        work.start_worker(lambda: engine, "bench", lambda engine: None, lambda exc: None)
        return await asyncio.gather(*(ticket.future for ticket in tickets))

    try:
        return asyncio.run(served())
    finally:
        work.stop(timeout=60)


def flipped(options: DiffusionOptions, piece: str, device) -> DiffusionOptions | str:
    """The options with one piece flipped, or why the flip cannot run here."""
    if piece == "embed_cache":
        return dataclasses.replace(options, embed_cache_size=0 if options.embed_cache_size else 64)
    if piece == "dtype":
        return "already float32" if options.dtype == "float32" else dataclasses.replace(options, dtype="float32")
    if piece == "vae_upcast":  # auto: on in float16 only
        upcast = options.vae_upcast if options.vae_upcast is not None else options.dtype == "float16"
        return dataclasses.replace(options, vae_upcast=not upcast)
    if piece == "fp8" and not options.fp8:
        from pipelines.engines.diffusion.fp8 import unsupported

        reason = unsupported(device)
        if reason is not None:
            return reason
    return dataclasses.replace(options, **{piece: not getattr(options, piece)})


def ablation(
    ours, model_set: ModelSet, pieces: list[str], job: SwapJob, args, engine_class, device, torch
) -> list[dict]:
    rows = []
    for piece in pieces:
        options = flipped(ours.options, piece, device)
        if isinstance(options, str):
            rows.append({"piece": piece, "skipped": options})
            continue
        _log(f"ablation: {piece} -> {_state(options, piece)}")
        rows.append(_ablation_row(ours, engine_class(model_set, options), piece, job, args, device))
        gc.collect()  # the variant engine is gone: give its memory back before the next one loads
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _ablation_row(ours, variant, piece: str, job: SwapJob, args, device) -> dict:
    default_probe, variant_probe = Probe(device), Probe(device)
    for _ in range(args.warmup):
        variant_probe.time(lambda: variant.swap(job))
    outputs = {}

    def timed(engine, probe: Probe) -> float:
        seconds, outputs[engine] = probe.time(lambda: engine.swap(job))
        return seconds

    default_s, variant_s = alternate(
        lambda: timed(ours, default_probe), lambda: timed(variant, variant_probe), repeats=args.repeats
    )
    default_median, variant_median = statistics.median(default_s), statistics.median(variant_s)
    return {
        "piece": piece,
        "default": _state(ours.options, piece),
        "flipped_to": _state(variant.options, piece),
        "s_per_image_median": _sig(variant_median),
        "default_s_per_image_median": _sig(default_median),
        "ratio_flipped_over_default": _ratio(variant_median, default_median),
        "steps": variant.steps_for(job),
        "default_steps": ours.steps_for(job),
        "peak_memory_bytes": variant_probe.peak_bytes(variant.pipe),
        # Same job, same seed: how far the flip moves the output (None: the same pixels). With random weights a
        # sanity figure only, not image quality.
        "psnr_vs_default_db": psnr(outputs[variant], outputs[ours]),
    }


def psnr(image: Image.Image, reference: Image.Image) -> float | None:
    """Peak signal-to-noise ratio of `image` against `reference` in dB, on 8-bit RGB; None when identical."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return None if mse == 0 else _sig(10 * np.log10(255.0**2 / mse))


def request_stages(samples: list[dict[str, float]]) -> dict:
    if not samples:
        return {}
    keys = ("fetch_s", "decode_s", "mask_ops_s", "embeds_s", "model_s", "encode_s")
    stages = {key: statistics.median(sample.get(key, 0.0) for sample in samples) for key in keys}
    total = sum(stages.values())
    outside = stages["fetch_s"] + stages["decode_s"] + stages["mask_ops_s"] + stages["encode_s"]
    return {
        **{key: _sig(value) for key, value in stages.items()},
        "total_s": _sig(total),
        "outside_model_share": _sig(outside / total) if total > 0 else None,
    }


def compute(
    baseline: DiffusersBaseline, ours, job: SwapJob, ours_median: float, peak_tflops: float | None, device, torch
) -> dict:
    """FLOPs of one image at ours' processed size, counted by running the baseline once under FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    width, height = processed_size(ours, job)
    sized = dataclasses.replace(
        job,
        main_image=Image.new("RGB", (width, height), (128, 128, 128)),
        mask_image=Image.new("L", (width, height), 255),
    )
    try:
        with FlopCounterMode(display=False) as counter:
            baseline(sized)
        tflop = counter.get_total_flops() / 1e12
    except Exception as exc:  # noqa: BLE001  (a counter gap must not sink the whole bench)
        _log(f"FLOP count failed: {exc}")
        return {"tflop_per_image": None}
    if peak_tflops is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((value for key, value in PRACTICAL_PEAK_TFLOPS.items() if key in name), None)
    floor = tflop / peak_tflops if peak_tflops else None
    return {
        "tflop_per_image": _sig(tflop),
        "counted_at": [width, height],
        "note": "aten FLOPs of the denoising loop, VAE and encoders"
        + ("; SDPA on CPU is not counted" if device.type == "cpu" else ""),
        "achieved_tflops": _sig(tflop / ours_median) if ours_median > 0 else None,
        "peak_tflops": peak_tflops,
        "floor_s": _sig(floor) if floor else None,
        "ours_over_floor": _sig(ours_median / floor) if floor else None,
    }


def memory(ours, probe: Probe) -> dict:
    """Bytes per component of ours, and what a CPU-offload setting would hold at most on the GPU."""
    components = {}
    for name, component in ours.pipe.components.items():
        if hasattr(component, "parameters"):
            components[name] = _module_bytes([component])
    largest = max(components, key=components.get)
    row = {
        "components_bytes": components,
        "weights_total_bytes": sum(components.values()),
        "largest_component": largest,
    }
    if probe.cuda:
        row["activation_peak_bytes"] = probe.activation_peak
        row["cpu_offload_peak_estimate_bytes"] = components[largest] + probe.activation_peak
    return row


# ---------------------------------------------------------------- helpers


def processed_size(engine, job: SwapJob) -> tuple[int, int]:
    from pipelines.engines.diffusion.geometry import context_box, crop_geometry

    main = job.main_image
    grown = grow_mask(normalize_mask(job.mask_image, main.size), job.growmask)
    return crop_geometry(context_box(grown, main.size), main.size, engine.native_side, engine.cell)[1]


def weight_files_bytes(model_set: ModelSet) -> int:
    """Bytes of the set's weight files: what the GPU holds for it, in the files' dtype."""
    return sum(path.stat().st_size for path in model_set.folder.rglob("*.safetensors"))


def fast_path(engine) -> dict:
    options = engine.options
    if not hasattr(engine.pipe, "unet"):
        return {
            "compile": engine.compiled,
            "embed_cache_size": options.embed_cache_size,
            "step_cache": options.step_cache,
            "note": "the UNet pieces (sdpa processors, fused qkv, channels-last) do not apply to FLUX.2",
        }
    fused = any(type(p).__name__ == "FusedAttnProcessor2_0" for p in engine.pipe.unet.attn_processors.values())
    return {
        "sdpa": options.sdpa,
        "fuse_qkv": fused,
        "channels_last": bool(options.channels_last),
        "compile": bool(options.compile),
        "embed_cache_size": options.embed_cache_size,
        "vae_tiling_above_pixels": options.vae_tiling_above_pixels,
    }


def summary(samples: list[float], peak_bytes: int | None) -> dict:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {
        "s_per_image_median": _sig(median),
        "s_per_image_p90": _sig(p90),
        "images_per_s": _sig(1 / median) if median > 0 else None,
        "peak_memory_bytes": peak_bytes,
        "samples_s": _rounded(samples),
    }


def weights_bytes(pipe, device_type: str | None = None) -> int:
    """Bytes of the pipeline's weights (on `device_type` only, when given: with CPU offload most are not)."""
    return _module_bytes([c for c in pipe.components.values() if hasattr(c, "parameters")], device_type)


def _module_bytes(modules, device_type: str | None = None) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (shared views count once)."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if device_type and tensor.device.type != device_type:
                continue
            storage = tensor.untyped_storage()
            seen[(tensor.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def _state(options: DiffusionOptions, piece: str):
    if piece == "embed_cache":
        return options.embed_cache_size
    return getattr(options, piece)


def _ratio(a: float, b: float) -> float | None:
    return _sig(a / b) if b > 0 else None


def _sig(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant figures (tiny CPU models give tiny numbers; they must stay non-zero)."""
    return float(f"{value:.{digits}g}")


def _rounded(values: list[float]) -> list[float]:
    return [_sig(v) for v in values]


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


_STARTED = time.monotonic()


def _log(message: str) -> None:
    """A progress line, with the seconds since start: where a long GPU run spends its time."""
    print(f"bench [{time.monotonic() - _STARTED:6.1f} s]: {message}", file=sys.stderr, flush=True)


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
