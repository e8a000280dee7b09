"""How much the model repaints, and with how many steps: one start-noise rule for every arch and scheduler.

The model starts from the placed pixels (SDEdit): they are noised to a start signal-to-noise ratio and then
denoised. That ratio decides how much of the placement survives, so it is the one thing subject_strength sets:
START_SNR maps it to a target SNR (amplitude: signal coefficient / noise coefficient, sqrt(abar / (1 - abar))
on SD's schedules, (1 - sigma) / sigma on FLUX.2's flow), the same on every arch, scheduler and step count.
Its values are SD1.5's at 30 steps under the earlier rule (strength 1 - 0.6 x subject_strength), the look the
engine was built around; between them the rule is linear in the flow sigma 1 / (1 + snr). At subject 0 the
start is pure noise: the model repaints fully and only the reference carries the object.

SD pipelines take `num_inference_steps` n and `strength` (or explicit `timesteps`) and run the last
int(n x strength) steps of the schedule, noising the image to its first timestep (at strength 1 they start
from pure noise instead). Each planner asks the scheduler itself (set_timesteps, then add_noise at the first
timestep that runs), so the start it reports is the one the denoiser gets, and exactly `steps` steps run:
- SdPlanner, the set's default scheduler: the n, strength and timestep spacing (its own, leading, trailing or
  linspace: diffusers' spacings of the same scheduler) whose cut starts nearest the target. Uniform spacings
  cannot start everywhere at few steps (10 DDIM steps start at t=811 or t=908, nothing between), which is
  why the spacings are searched too.
- KarrasPlanner, below LOW_STEPS: DPM++ 2M on Karras-spaced timesteps (Karras et al. 2022, rho 7). A Karras
  schedule's tail is Karras-spaced too (sigma^(1/rho) falls by equal steps), so the plan is that tail from the
  target's level down, as explicit timesteps; a cut of diffusers' n-step Karras schedule can only start at one
  of its n points (up to 8 % off at 11 steps).
- LcmPlanner, few-step mode: LCM's own distillation grid (every 20th timestep for 50 original steps), from the
  grid point nearest the target down, spread as LCMScheduler spreads its steps.
The explicit plans put one timestep more on top, which the pipeline's strength cuts: the noise then goes in at
the second, the first that runs.

FLUX.2 pipelines take explicit `sigmas`, which the scheduler shifts by the resolution (mu). `flow_sigmas` starts
them at the unshifted level whose shifted sigma is the target, and spaces the steps below it as the model was
trained: uniform in unshifted time, then shifted (diffusers' Flux2KleinPipeline defaults to
linspace(1, 1/n, n) with mu = compute_empirical_mu(tokens, n), after Black Forest Labs' flux2 sampling code,
get_schedule); the schedule is that one scaled to start at the target's level.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

# subject_strength -> start SNR. SD1.5 at 30 steps under the earlier strength rule gave these (pure noise,
# then about t = 784, 668, 524, 379 of 1000). What each keeps: README, "The start noise".
START_SNR = ((0.0, 0.0), (0.25, 0.21), (0.5, 0.34), (0.75, 0.57), (1.0, 0.92))
LOW_STEPS = 20  # below this, DPM++ 2M on Karras timesteps replaces an SD set's scheduler (it holds up at 10-20)
SPACINGS = ("leading", "trailing", "linspace")
KARRAS_RHO = 7.0  # Karras et al. 2022, and diffusers' _convert_to_karras
PLANS_KEPT = 512


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
    """What an SD pipeline is handed: its scheduler, `num_inference_steps` and `strength` (and explicit
    `timesteps` where the plan makes them), and the start SNR they give (0: pure noise)."""

    scheduler: object
    length: int
    strength: float
    snr: float
    timesteps: tuple[int, ...] | None = None


class _Planner:
    """Plans for one scheduler, the last PLANS_KEPT of them kept (subject_strength is any number in 0..1). A
    planner asks private copies of its schedulers, never the ones a pipeline may be running (plans are made
    while the model works on the job before). One thread plans at a time."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self._plans: OrderedDict[tuple[int, float], StartPlan] = OrderedDict()

    def plan(self, steps: int, target_snr: float) -> StartPlan:
        key = (steps, round(target_snr, 6))
        if key in self._plans:
            self._plans.move_to_end(key)
        else:
            self._plans[key] = self._plan(steps, target_snr)
            if len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
        return self._plans[key]

    def _plan(self, steps: int, target_snr: float) -> StartPlan:
        raise NotImplementedError


class SdPlanner(_Planner):
    """The set's own scheduler: the schedule length, strength and spacing whose cut starts nearest the target."""

    def __init__(self, scheduler):
        super().__init__(scheduler)
        self.schedulers = spacing_variants(scheduler)
        self._probes = [copy.deepcopy(variant) for variant in self.schedulers]

    def _plan(self, steps: int, target_snr: float) -> StartPlan:
        if target_snr <= 0:
            return StartPlan(self.scheduler, _whole(self._probes[0], steps), 1.0, 0.0)
        pairs = zip(self.schedulers, self._probes, strict=True)
        plans = [plan for scheduler, probe in pairs if (plan := _nearest(scheduler, probe, steps, target_snr))]
        if not plans:
            raise ValueError(f"no schedule of {type(self.scheduler).__name__} runs {steps} steps")
        return min(plans, key=lambda plan: abs(math.log(plan.snr / target_snr)))  # ties: the set's own spacing


def _nearest(scheduler, probe, steps: int, target: float) -> StartPlan | None:
    """The schedule length whose cut starts nearest `target` (asked of `probe`, a private copy of `scheduler`).
    The start SNR grows with the length (a longer schedule's last `steps` steps start lower), so a bisection
    finds the crossing; its neighbours decide."""
    longest = _longest(scheduler)
    low, high = steps + 1, longest
    while low < high:
        middle = (low + high) // 2
        plan = _cut(probe, scheduler, middle, steps)
        if plan is not None and plan.snr >= target:
            high = middle
        else:
            low = middle + 1
    around = [_cut(probe, scheduler, n, steps) for n in range(max(steps + 1, low - 2), min(low + 3, longest + 1))]
    return min((p for p in around if p), key=lambda plan: abs(math.log(plan.snr / target)), default=None)


def _cut(probe, scheduler, length: int, steps: int) -> StartPlan | None:
    """The plan of an n-step schedule cut to its last `steps` steps as diffusers' SD pipelines cut it
    (get_timesteps: timesteps[t_start x order:], begin index set there), or None if no cut runs exactly `steps`."""
    probe.set_timesteps(length)
    skipped, remainder = divmod(len(probe.timesteps) - steps, probe.order)
    if skipped < 1 or remainder:
        return None
    if hasattr(probe, "set_begin_index"):
        probe.set_begin_index(skipped * probe.order)
    snr = noise_snr(probe, probe.timesteps[skipped * probe.order])
    return StartPlan(scheduler, length, (length - skipped + 0.5) / length, snr)


def _whole(probe, steps: int) -> int:
    """The schedule length with exactly `steps` timesteps (PNDM's schedules hold one more than their length)."""
    for length in (steps, steps - 1):
        probe.set_timesteps(length)
        if len(probe.timesteps) == steps:
            return length
    raise ValueError(f"no schedule of {type(probe).__name__} has {steps} steps")


def _longest(scheduler) -> int:
    config = scheduler.config
    return int(getattr(config, "original_inference_steps", None) or config.num_train_timesteps)


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


class _ExplicitPlanner(_Planner):
    """Plans with explicit timesteps: `_timesteps` gives the descending ones to run, from the start down."""

    def __init__(self, scheduler):
        super().__init__(scheduler)
        self._probe = copy.deepcopy(scheduler)
        abar = scheduler.alphas_cumprod.double().numpy()
        self._log_sigmas = np.log(np.sqrt((1 - abar) / abar))  # increasing with the timestep
        self._top = len(abar) - 1

    def _plan(self, steps: int, target_snr: float) -> StartPlan:
        timesteps = self._timesteps(steps, target_snr)
        if target_snr <= 0 or timesteps[0] >= self._top:  # pure noise, from strength 1
            return StartPlan(self.scheduler, steps, 1.0, 0.0, tuple(timesteps))
        timesteps = [timesteps[0] + 1, *timesteps]  # the one the strength cuts
        self._probe.set_timesteps(timesteps=timesteps)
        self._probe.set_begin_index(1)
        snr = noise_snr(self._probe, self._probe.timesteps[1])
        return StartPlan(self.scheduler, steps + 1, (steps + 0.5) / (steps + 1), snr, tuple(timesteps))

    def _timesteps(self, steps: int, target_snr: float) -> list[int]:
        raise NotImplementedError

    def _timestep(self, sigma: float) -> float:
        return float(np.interp(math.log(sigma), self._log_sigmas, np.arange(self._top + 1)))


class KarrasPlanner(_ExplicitPlanner):
    """DPM++ 2M (a scheduler that takes explicit timesteps) on Karras-spaced timesteps from the target down."""

    def _timesteps(self, steps: int, target_snr: float) -> list[int]:
        lowest, highest = math.exp(self._log_sigmas[0]), math.exp(self._log_sigmas[-1])
        top = highest if target_snr <= 0 else min(1.0 / target_snr, highest)
        roots = np.linspace(top ** (1 / KARRAS_RHO), lowest ** (1 / KARRAS_RHO), steps)
        timesteps = [round(self._timestep(root**KARRAS_RHO)) for root in roots]
        for index in range(steps - 2, -1, -1):  # rounding may join neighbours near 0: keep every step
            timesteps[index] = max(timesteps[index], timesteps[index + 1] + 1)
        return timesteps


class LcmPlanner(_ExplicitPlanner):
    """LCM on its distillation grid, from the grid point nearest the target down."""

    def _timesteps(self, steps: int, target_snr: float) -> list[int]:
        config = self.scheduler.config
        skip = config.num_train_timesteps // config.original_inference_steps
        grid = np.arange(1, config.original_inference_steps + 1) * skip - 1  # 19, 39, ... 999
        if target_snr <= 0:
            start = len(grid) - 1
        else:
            snrs = np.exp(-self._log_sigmas[grid])
            start = max(steps - 1, int(np.argmin(np.abs(np.log(snrs / target_snr)))))
        below = grid[: start + 1][::-1]
        picks = np.floor(np.linspace(0, len(below), steps, endpoint=False)).astype(int)  # LCMScheduler's spread
        return [int(t) for t in below[picks]]


def low_step_scheduler(scheduler):
    """DPM++ 2M from the model set's scheduler config; KarrasPlanner gives it Karras-spaced timesteps."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=False
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
