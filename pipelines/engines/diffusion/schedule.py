"""How much the model repaints and with how many steps.

The model starts from the placed pixels (SDEdit-style): the denoising strength is 1 - 0.6 x subject_strength,
so at subject 1 the model keeps the placement's layout and identity and re-draws light, edges and shadows,
and at subject 0 it repaints fully. diffusers runs int(n x strength) of an n-step schedule; n is chosen so that
exactly the job's `steps` steps run. Below LOW_STEPS steps, DPM++ 2M with Karras sigmas replaces the model
set's scheduler: it holds up at 10-20 steps where Euler and DDIM turn soft.
"""

from __future__ import annotations

import math

KEPT_AT_FULL_SUBJECT = 0.6
LOW_STEPS = 20


def denoising_strength(subject_strength: float) -> float:
    return 1.0 - KEPT_AT_FULL_SUBJECT * subject_strength


def schedule_length(steps: int, strength: float) -> int:
    """The `num_inference_steps` for which diffusers runs exactly `steps` steps at `strength`."""
    length = max(steps, math.ceil(steps / strength))
    while min(int(length * strength), length) < steps:
        length += 1
    while length > steps and min(int((length - 1) * strength), length - 1) >= steps:
        length -= 1
    return length


def low_step_scheduler(scheduler):
    """DPM++ 2M Karras from the model set's scheduler config."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )
