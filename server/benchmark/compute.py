"""What one image costs: its FLOPs against the device's floor, the memory of each component, and the fast path
the engine runs with."""

from __future__ import annotations

import dataclasses

from PIL import Image

from pipelines import SwapJob
from pipelines.imageops import grow_mask, normalize_mask
from pipelines.models.model_sets import ModelSet
from server.benchmark.baselines import DiffusersBaseline
from server.benchmark.timing import Probe, log, module_bytes, sig

PRACTICAL_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}


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
        log(f"FLOP count failed: {exc}")
        return {"tflop_per_image": None}
    if peak_tflops is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((value for key, value in PRACTICAL_PEAK_TFLOPS.items() if key in name), None)
    floor = tflop / peak_tflops if peak_tflops else None
    return {
        "tflop_per_image": sig(tflop),
        "counted_at": [width, height],
        "note": "aten FLOPs of the denoising loop, VAE and encoders"
        + ("; SDPA on CPU is not counted" if device.type == "cpu" else ""),
        "achieved_tflops": sig(tflop / ours_median) if ours_median > 0 else None,
        "peak_tflops": peak_tflops,
        "floor_s": sig(floor) if floor else None,
        "ours_over_floor": sig(ours_median / floor) if floor else None,
    }


def memory(ours, probe: Probe) -> dict:
    """Bytes per component of ours, and what a CPU-offload setting would hold at most on the GPU."""
    components = {}
    for name, component in ours.pipe.components.items():
        if hasattr(component, "parameters"):
            components[name] = module_bytes([component])
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
