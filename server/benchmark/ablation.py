"""The ablation rows: each fast-path piece flipped from its default, alternating with the default."""

from __future__ import annotations

import dataclasses
import gc
import statistics

from pipelines import SwapJob
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.models.model_sets import ModelSet
from server.benchmark.timing import Probe, alternate, log, psnr, ratio, sig

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
        log(f"ablation: {piece} -> {_state(options, piece)}")
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
        "s_per_image_median": sig(variant_median),
        "default_s_per_image_median": sig(default_median),
        "ratio_flipped_over_default": ratio(variant_median, default_median),
        "steps": variant.steps_for(job),
        "default_steps": ours.steps_for(job),
        "peak_memory_bytes": variant_probe.peak_bytes(variant.pipe),
        # Same job, same seed: how far the flip moves the output (None: the same pixels). With random weights a
        # sanity figure only, not image quality.
        "psnr_vs_default_db": psnr(outputs[variant], outputs[ours]),
    }


def _state(options: DiffusionOptions, piece: str):
    if piece == "embed_cache":
        return options.embed_cache_size
    return getattr(options, piece)
