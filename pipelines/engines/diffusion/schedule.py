"""How much the model repaints and with how many steps.

The model starts from the placed pixels (SDEdit-style): the denoising strength is 1 - 0.6 x subject_strength,
so at subject 1 the model keeps the placement's layout and identity and re-draws light, edges and shadows,
and at subject 0 it repaints fully. diffusers runs about n x strength steps of an n-step schedule (the SD and
the flow-matching pipelines round differently); n is chosen so that exactly the job's `steps` steps run. Below
LOW_STEPS steps, DPM++ 2M with Karras sigmas replaces an SD set's scheduler: it holds up at 10-20 steps where
Euler and DDIM turn soft.
"""

from __future__ import annotations

import math
from collections.abc import Callable

KEPT_AT_FULL_SUBJECT = 0.6
LOW_STEPS = 20


def denoising_strength(subject_strength: float) -> float:
    return 1.0 - KEPT_AT_FULL_SUBJECT * subject_strength


def schedule_length(steps: int, strength: float) -> int:
    """The `num_inference_steps` for which diffusers' SD pipelines run exactly `steps` steps at `strength`."""
    return _shortest(steps, strength, lambda length: min(int(length * strength), length))


def flow_schedule_length(steps: int, strength: float) -> int:
    """The same for the flow-matching pipelines (FLUX.2), which count the skipped steps instead:
    they skip int(n - n x strength) of n."""
    return _shortest(steps, strength, lambda length: length - int(max(length - min(length * strength, length), 0)))


def _shortest(steps: int, strength: float, runs: Callable[[int], int]) -> int:
    """The shortest schedule that runs `steps` steps: `runs` grows by at most one per step of schedule."""
    length = max(steps, math.floor(steps / strength) - 1)
    while length > steps and runs(length - 1) >= steps:
        length -= 1
    while runs(length) < steps:
        length += 1
    return length


def low_step_scheduler(scheduler):
    """DPM++ 2M Karras from the model set's scheduler config."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )
