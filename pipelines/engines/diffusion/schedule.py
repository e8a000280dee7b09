"""How much the model repaints, and with how many steps: one start-noise rule for every arch and scheduler.

The model starts from the placed pixels (SDEdit): they are noised to a start signal-to-noise ratio and then
denoised. That ratio decides how much of the placement survives, so it is the one thing subject_strength sets:
START_SNR maps it to a target SNR (amplitude: signal coefficient / noise coefficient, sqrt(abar / (1 - abar))
on SD's schedules, (1 - sigma) / sigma on FLUX.2's flow), the same on every arch, scheduler and step count.
Its values are SD1.5's at 30 steps under the earlier rule (strength 1 - 0.6 x subject_strength), the look the
engine was built around; between them the rule is linear in the flow sigma 1 / (1 + snr). At subject 0 the
start is pure noise: the model repaints fully and only the reference carries the object.

SD pipelines take `num_inference_steps` n and `strength` and run the last int(n x strength) steps of the
scheduler's n-step schedule, noising to its first timestep. `sd_plan` chooses n, the strength and the
scheduler's timestep spacing (its own, leading, trailing or linspace: all diffusers spacings of the same
scheduler) whose cut runs exactly `steps` steps and starts nearest the target; it asks the scheduler itself
(set_timesteps, then add_noise at the first timestep), so every scheduler gives the same start: the set's
default, DPM++ 2M Karras below LOW_STEPS, LCM in few-step mode. Uniform spacings cannot start everywhere at
few steps (10 DDIM steps start at t=811 or t=908, nothing between), which is why the spacings are searched too.

FLUX.2 pipelines take explicit `sigmas`, which the scheduler shifts by the resolution (mu). `flow_sigmas` starts
them at the unshifted level whose shifted sigma is the target, and spaces the steps below it as the model was
trained: uniform in unshifted time, then shifted (diffusers' Flux2KleinPipeline defaults to
linspace(1, 1/n, n) with mu = compute_empirical_mu(tokens, n), after Black Forest Labs' flux2 sampling code,
get_schedule); the schedule is that one scaled to start at the target's level.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# subject_strength -> start SNR. SD1.5 at 30 steps under the earlier strength rule gave these (t = 999 with
# pure noise, 790, 700, 560, 378): 1.0 keeps the placement's layout, colour and large shapes and re-draws
# light, edges and contact; 0.5 keeps rough colour and position; 0.0 keeps nothing.
START_SNR = ((0.0, 0.0), (0.25, 0.21), (0.5, 0.34), (0.75, 0.57), (1.0, 0.92))
LOW_STEPS = 20  # below this, DPM++ 2M Karras replaces an SD set's scheduler (it holds up at 10-20 steps)
SPACINGS = ("leading", "trailing", "linspace")


def start_snr(subject_strength: float) -> float:
    """The start SNR for a subject_strength: START_SNR, linear in the flow sigma between its rows."""
    subjects, snrs = zip(*START_SNR, strict=True)
    sigma = float(np.interp(subject_strength, subjects, [flow_sigma(snr) for snr in snrs]))
    return (1.0 - sigma) / sigma


def flow_sigma(snr: float) -> float:
    """The flow-matching sigma with that SNR: x = (1 - sigma) x clean + sigma x noise."""
    return 1.0 / (1.0 + snr)


@dataclass(frozen=True)
class StartPlan:
    """What an SD pipeline is handed: its scheduler, `num_inference_steps` and `strength`, and the start SNR
    they give (0: pure noise)."""

    scheduler: object
    length: int
    strength: float
    snr: float


class SdPlanner:
    """Plans for one scheduler: its spacing variants, and the plans made so far."""

    def __init__(self, scheduler):
        self.schedulers = spacing_variants(scheduler)
        self._plans: dict[tuple[int, float], StartPlan] = {}

    def plan(self, steps: int, target_snr: float) -> StartPlan:
        key = (steps, round(target_snr, 6))
        if key not in self._plans:
            self._plans[key] = sd_plan(self.schedulers, steps, target_snr)
        return self._plans[key]


def sd_plan(schedulers: Sequence, steps: int, target_snr: float) -> StartPlan:
    """The plan that runs exactly `steps` steps from the start nearest `target_snr` (log error; ties go to the
    first scheduler). A target of 0 is pure noise: strength 1, the whole schedule."""
    if target_snr <= 0:
        return StartPlan(schedulers[0], steps, 1.0, 0.0)
    plans = [plan for scheduler in schedulers if (plan := _nearest(scheduler, steps, target_snr)) is not None]
    if not plans:
        raise ValueError(f"no schedule of {type(schedulers[0]).__name__} runs {steps} steps")
    return min(plans, key=lambda plan: abs(math.log(plan.snr / target_snr)))


def _nearest(scheduler, steps: int, target: float) -> StartPlan | None:
    """The schedule length whose cut starts nearest `target`. The start SNR grows with the length (a longer
    schedule's last `steps` steps start lower), so a bisection finds the crossing; its neighbours decide."""
    probe = copy.deepcopy(scheduler)
    low, high = steps + 1, _longest(scheduler)
    while low < high:
        middle = (low + high) // 2
        plan = _cut(probe, scheduler, middle, steps)
        if plan is not None and plan.snr >= target:
            high = middle
        else:
            low = middle + 1
    around = [_cut(probe, scheduler, length, steps) for length in range(max(steps + 1, low - 2), low + 3)]
    around = [plan for plan in around if plan is not None and plan.length <= _longest(scheduler)]
    return min(around, key=lambda plan: abs(math.log(plan.snr / target)), default=None)


def _longest(scheduler) -> int:
    config = scheduler.config
    return int(getattr(config, "original_inference_steps", None) or config.num_train_timesteps)


def _cut(probe, scheduler, length: int, steps: int) -> StartPlan | None:
    """The plan of an n-step schedule cut to its last `steps` steps as diffusers' SD pipelines cut it
    (get_timesteps: timesteps[t_start x order:], begin index set there), or None if no cut runs exactly `steps`."""
    probe.set_timesteps(length)
    total, order = len(probe.timesteps), probe.order
    skipped, remainder = divmod(total - steps, order)
    if skipped < 1 or remainder:
        return None
    probe.set_begin_index(skipped * order) if hasattr(probe, "set_begin_index") else None
    snr = noise_snr(probe, probe.timesteps[skipped * order])
    return StartPlan(scheduler, length, (length - skipped + 0.5) / length, snr)


def noise_snr(scheduler, timestep) -> float:
    """The SNR `scheduler.add_noise` gives at `timestep` (in its current state): its signal and noise
    coefficients, read off by noising a one with no noise and a zero with unit noise."""
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    at = torch.as_tensor([timestep])
    signal = float(scheduler.add_noise(one, zero, at).flatten()[0])
    noise = float(scheduler.add_noise(zero, one, at).flatten()[0])
    return signal / noise


def spacing_variants(scheduler) -> list:
    """The scheduler, then the same scheduler with each other timestep spacing that gives other timesteps."""
    variants = [scheduler]
    if "timestep_spacing" not in scheduler.config:
        return variants
    seen = [_signature(scheduler)]
    for spacing in SPACINGS:
        if spacing == scheduler.config.timestep_spacing:
            continue
        variant = type(scheduler).from_config(scheduler.config, timestep_spacing=spacing)
        if (signature := _signature(variant)) not in seen:
            seen.append(signature)
            variants.append(variant)
    return variants


def _signature(scheduler) -> tuple:
    probe = copy.deepcopy(scheduler)
    timesteps = []
    for length in (13, 50):
        probe.set_timesteps(length)
        timesteps.append(tuple(float(t) for t in probe.timesteps))
    return tuple(timesteps)


def low_step_scheduler(scheduler):
    """DPM++ 2M Karras from the model set's scheduler config."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )


def flow_sigmas(scheduler, steps: int, target_snr: float, mu: float | None) -> list[float]:
    """The `sigmas` for a FLUX.2 pipeline: `steps` values, uniform in unshifted time from the level whose shifted
    sigma is the target's down to level / steps (the pipeline's own spacing, scaled). The scheduler shifts them
    (set_timesteps with mu), so the level is found by bisection on what it makes of them."""
    spacing = np.linspace(1.0, 1.0 / steps, steps)
    target = flow_sigma(target_snr)
    if target >= 1.0:
        return spacing.tolist()
    probe = copy.deepcopy(scheduler)

    def first_sigma(level: float) -> float:
        probe.set_timesteps(sigmas=(level * spacing).tolist(), mu=mu)
        return float(probe.sigmas[0])

    low, high = 0.0, 1.0
    for _ in range(60):  # first_sigma grows with the level
        middle = (low + high) / 2
        low, high = (middle, high) if first_sigma(middle) < target else (low, middle)
    return ((low + high) / 2 * spacing).tolist()
