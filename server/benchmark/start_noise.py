"""The start signal-to-noise ratio each diffusion engine hands its denoiser, measured, for a table of
subject_strength x steps.

    python -m server.benchmark.start_noise [--arch sd15,sdxl,flux2-klein,flux2-klein-base] [--few-step]
                                           [--steps 10,15,19,20,30,45,60,100] [--subjects 0,0.25,0.5,0.75,1]
                                           [--flux2-side 1024] [--out FILE]

The engines run on the tiny random-weight sets (pipelines/models/tiny.py) through their real pipelines; the
numbers measured do not depend on the weights. For each swap, the pipeline's `prepare_latents` is watched:
it returns the latents the loop starts from and the noise it drew, and the clean image latents are what it
encoded (SD: `_encode_vae_image` inside it; FLUX.2: the packed image latents it returns). The start latents
are a x clean + b x noise; a and b are solved by least squares, and the start SNR is a / b (amplitude; 0 is
pure noise, where diffusers never mixes the image in). The denoiser's first call records its timestep and
stops the swap: nothing after it is needed. FLUX.2 crops run at --flux2-side (the real models' 1024 by
default), because the pipeline's resolution shift depends on the token count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipelines import SwapJob

DEFAULT_STEPS = (10, 15, 19, 20, 30, 45, 60, 100)
DEFAULT_SUBJECTS = (0.0, 0.25, 0.5, 0.75, 1.0)
ARCHS = ("sd15", "sdxl", "flux2-klein", "flux2-klein-base")


class _FirstCall(Exception):
    """Raised at the denoiser's first call: the measurement is complete there."""


def measure_start(engine, job: SwapJob) -> dict:
    """Run `job` on `engine` up to the denoiser's first call; returns the start SNR, its a and b, and the
    first timestep the denoiser received."""
    pipe = engine.pipe
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    seen: dict = {}

    def encode(*args, **kwargs):
        clean = type(pipe)._encode_vae_image(pipe, *args, **kwargs)
        if seen.get("preparing") and "clean" not in seen:
            seen["clean"] = clean
        return clean

    def prepare(*args, **kwargs):
        seen["preparing"] = True
        out = type(pipe).prepare_latents(pipe, *args, **kwargs)
        seen["preparing"] = False
        seen["latents"], seen["noise"] = out[0], out[1]
        if hasattr(pipe, "transformer"):  # FLUX.2: (latents, noise, packed image latents, ...)
            seen["clean"] = out[2]
        return out

    def first_call(module, args, kwargs):
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        seen["timestep"] = float(torch.as_tensor(timestep).flatten()[0])
        raise _FirstCall

    pipe.prepare_latents, pipe._encode_vae_image = prepare, encode
    handle = denoiser.register_forward_pre_hook(first_call, with_kwargs=True)
    try:
        engine.swap(job)
    except _FirstCall:
        pass
    finally:
        handle.remove()
        del pipe.prepare_latents, pipe._encode_vae_image
    if "timestep" not in seen:
        raise RuntimeError("the denoiser was never called")
    a, b = _coefficients(seen["latents"], seen.get("clean"), seen["noise"])
    return {"snr": a / b, "signal": a, "noise": b, "first_timestep": seen["timestep"]}


def _coefficients(latents, clean, noise) -> tuple[float, float]:
    """a, b with latents = a x clean + b x noise (least squares); a = 0 without clean latents."""
    target = latents.detach().double().flatten()
    columns = [noise.detach().double().flatten()]
    if clean is not None:
        columns.insert(0, clean.detach().double().expand_as(latents).flatten())
    solution = torch.linalg.lstsq(torch.stack(columns, dim=1), target[:, None]).solution.flatten().tolist()
    return (solution[0], solution[1]) if clean is not None else (0.0, solution[0])


def probe_job(steps: int, subject: float) -> SwapJob:
    """A small textured scene, a box mask and a striped object: what the engines need to run a swap."""
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(40, 220, (96, 128, 3), dtype=np.uint8), "RGB")
    mask = Image.new("L", scene.size, 0)
    ImageDraw.Draw(mask).rectangle((40, 24, 88, 72), fill=255)
    obj = Image.new("RGB", (32, 32), (200, 40, 40))
    ImageDraw.Draw(obj).rectangle((8, 0, 15, 31), fill=(240, 240, 200))
    return SwapJob(main_image=scene, mask_image=mask, object_image=obj, steps=steps, subject_strength=subject, seed=3)


def start_table(
    weights: Path,
    archs=ARCHS,
    steps=DEFAULT_STEPS,
    subjects=DEFAULT_SUBJECTS,
    few_step: bool = False,
    flux2_side: int = 1024,
) -> list[dict]:
    """One row per arch and subject_strength: the measured start SNR at each step count."""
    from pipelines.engines.diffusion.options import DiffusionOptions
    from pipelines.engines.selection import diffusion_engine
    from pipelines.models.model_sets import model_set_at

    rows = []
    for arch in archs:
        engine = diffusion_engine(model_set_at(weights / arch), DiffusionOptions(device="cpu", few_step=few_step))
        if arch.startswith("flux2"):
            engine.native_side = flux2_side
        for subject in subjects:
            measured = {str(n): measure_start(engine, probe_job(n, subject)) for n in steps}
            snrs = [m["snr"] for m in measured.values()]
            rows.append(
                {
                    "arch": arch + (" few-step" if few_step and not arch.startswith("flux2") else ""),
                    "subject_strength": subject,
                    "snr_by_steps": {n: round(m["snr"], 4) for n, m in measured.items()},
                    "first_timestep_by_steps": {n: round(m["first_timestep"], 2) for n, m in measured.items()},
                    "spread": round(max(snrs) / min(snrs) - 1, 4) if min(snrs) > 0 else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.benchmark.start_noise", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=",".join(ARCHS))
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)))
    parser.add_argument("--subjects", default=",".join(map(str, DEFAULT_SUBJECTS)))
    parser.add_argument("--few-step", action="store_true", help="SD sets in few-step mode (LCM-LoRA)")
    parser.add_argument("--flux2-side", type=int, default=1024)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from pipelines.models.few_step import LORA_SETS
    from pipelines.models.model_sets import SETS
    from pipelines.models.tiny import make_tiny

    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    with tempfile.TemporaryDirectory(prefix="segswap-start-noise-") as work:
        loras = [LORA_SETS[SETS[a]] for a in archs if args.few_step and SETS[a] in LORA_SETS]
        make_tiny(Path(work), sets=(*archs, *loras))
        rows = start_table(
            Path(work),
            archs,
            [int(s) for s in args.steps.split(",")],
            [float(s) for s in args.subjects.split(",")],
            args.few_step,
            args.flux2_side,
        )
    text = json.dumps(rows, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    for row in rows:
        values = " ".join(f"{n}:{v:.3f}" for n, v in row["snr_by_steps"].items())
        print(f"{row['arch']:>18} subject {row['subject_strength']:.2f}  {values}  spread {row['spread']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
