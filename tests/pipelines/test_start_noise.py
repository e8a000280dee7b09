"""One start-noise rule (pipelines/engines/diffusion/schedule.py): subject_strength sets the start SNR, the same
on every arch, scheduler and step count, and exactly `steps` steps run.

The plans are checked on the real SD1.5 and SDXL inpainting scheduler configs (server/benchmark/configs) and
the schedulers the engine derives from them, with diffusers' own cut (the pipelines' get_timesteps); the
engines are measured where it counts, at what the pipeline hands the denoiser (server.benchmark.start_noise:
the start latents solved as a x clean + b x noise)."""

import copy
import types

import numpy as np
import pytest

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
)

from pipelines.engines.diffusion.engine import DiffusionEngine  # noqa: E402
from pipelines.engines.diffusion.flux2 import Flux2Engine  # noqa: E402
from pipelines.engines.diffusion.options import DiffusionOptions  # noqa: E402
from pipelines.engines.diffusion.schedule import (  # noqa: E402
    START_SNR,
    KarrasPlanner,
    LcmPlanner,
    SdPlanner,
    flow_sigma,
    flow_sigmas,
    low_step_scheduler,
    noise_snr,
    start_snr,
)
from pipelines.models.model_sets import ModelSet, model_set_at  # noqa: E402
from pipelines.models.tiny_flux2 import flow_scheduler  # noqa: E402
from server.benchmark.full_models import config  # noqa: E402
from server.benchmark.start_noise import measure_start, probe_job  # noqa: E402

SUBJECTS = (0.25, 0.5, 0.75, 1.0)
STEPS = (*range(10, 21), 25, 30, 37, 45, 50, 60, 75, 100)


def real_scheduler(arch: str):
    kind = {"sd15": DDIMScheduler, "sdxl": EulerDiscreteScheduler}[arch]
    return kind.from_config(config(f"{arch}/scheduler.json"))


def planners() -> dict[str, object]:
    """The set's default (SD1.5: DDIM, SDXL: Euler, leading spacing), the engine's DPM++ 2M on Karras-spaced
    timesteps below 20 steps, and PNDM, which many SD1.5 checkpoints ship (its schedule holds one timestep
    twice)."""
    sd15, sdxl = real_scheduler("sd15"), real_scheduler("sdxl")
    return {
        "sd15-ddim": SdPlanner(sd15),
        "sdxl-euler": SdPlanner(sdxl),
        "sd15-dpm-karras": KarrasPlanner(low_step_scheduler(sd15)),
        "sdxl-dpm-karras": KarrasPlanner(low_step_scheduler(sdxl)),
        "sd15-pndm": SdPlanner(PNDMScheduler.from_config(sd15.config, skip_prk_steps=True)),
    }


def pipeline_start(plan) -> tuple[int, float]:
    """The steps the SD pipeline runs for a plan and the SNR it noises to: the scheduler set as
    retrieve_timesteps sets it, diffusers' own get_timesteps on it, then its add_noise at the first timestep."""
    scheduler = copy.deepcopy(plan.scheduler)
    if plan.timesteps:
        scheduler.set_timesteps(timesteps=list(plan.timesteps))
        length = len(scheduler.timesteps)
    else:
        scheduler.set_timesteps(plan.length)
        length = plan.length
    stand_in = types.SimpleNamespace(scheduler=scheduler)
    timesteps, _ = StableDiffusionInpaintPipeline.get_timesteps(stand_in, length, plan.strength, "cpu")
    return len(timesteps), noise_snr(scheduler, timesteps[0])


def test_the_table_runs_from_pure_noise_to_the_placement_kept():
    assert start_snr(0.0) == 0.0 and start_snr(1.0) == pytest.approx(START_SNR[-1][1])
    values = [start_snr(s) for s in np.linspace(0, 1, 41)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), "more subject, more of the placement"
    for subject, snr in START_SNR:
        assert start_snr(subject) == pytest.approx(snr)
    middle = flow_sigma(start_snr(0.375))
    assert middle == pytest.approx((flow_sigma(START_SNR[1][1]) + flow_sigma(START_SNR[2][1])) / 2)


@pytest.mark.parametrize("name", list(planners()))
def test_every_scheduler_starts_at_the_target_and_runs_exactly_the_steps(name):
    planner = planners()[name]
    worst = 0.0
    for steps in STEPS:
        for subject in SUBJECTS:
            plan = planner.plan(steps, start_snr(subject))
            ran, snr = pipeline_start(plan)
            assert ran == steps, (steps, subject)
            assert snr == pytest.approx(plan.snr, rel=1e-6)
            assert plan.strength < 1.0
            worst = max(worst, abs(np.log(snr / start_snr(subject))))
    assert worst < np.log(1.1), f"{name}: a start {np.exp(worst):.3f}x off its target"


def test_plans_are_made_once_and_a_bounded_number_kept(monkeypatch):
    import pipelines.engines.diffusion.schedule as schedule

    monkeypatch.setattr(schedule, "PLANS_KEPT", 3)
    planner = KarrasPlanner(low_step_scheduler(real_scheduler("sd15")))
    first = planner.plan(12, 0.5)
    assert planner.plan(12, 0.5) is first  # made once
    for target in (0.1, 0.2, 0.3):
        planner.plan(12, target)
    assert len(planner._plans) == 3 and planner.plan(12, 0.5) is not first  # the oldest went


@pytest.mark.parametrize("name", list(planners()))
def test_subject_zero_is_pure_noise_over_the_whole_schedule(name):
    plan = planners()[name].plan(13, start_snr(0.0))
    assert (plan.strength, plan.snr) == (1.0, 0.0)
    assert pipeline_start(plan)[0] == 13


def test_the_low_step_timesteps_are_a_karras_schedules_tail():
    """sigma^(1/7) falls by equal steps from the target's sigma to the schedule's lowest: each timestep is the
    nearest whole one (within one) to that ideal, and one more sits above the start for the strength cut."""
    planner = KarrasPlanner(low_step_scheduler(real_scheduler("sdxl")))
    target = start_snr(1.0)
    plan = planner.plan(12, target)
    abar = planner.scheduler.alphas_cumprod.double().numpy()
    log_sigmas = np.log(np.sqrt((1 - abar) / abar))
    roots = np.linspace((1 / target) ** (1 / 7), np.exp(log_sigmas[0]) ** (1 / 7), 12)
    ideal = np.interp(np.log(roots**7), log_sigmas, np.arange(len(abar)))
    assert len(plan.timesteps) == 13 and plan.timesteps[0] > plan.timesteps[1]
    assert np.abs(np.asarray(plan.timesteps[1:]) - ideal).max() <= 1.0


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_few_step_lcm_starts_at_the_target(arch):
    planner = LcmPlanner(LCMScheduler.from_config(real_scheduler(arch).config))
    for steps in range(4, 9):
        for subject in SUBJECTS:
            plan = planner.plan(steps, start_snr(subject))
            ran, snr = pipeline_start(plan)
            assert ran == steps and abs(np.log(snr / start_snr(subject))) < np.log(1.1), (steps, subject, snr)


@pytest.mark.parametrize("steps", [4, 10, 30, 100])
@pytest.mark.parametrize("subject", [0.0, 0.4, 1.0])
def test_flux2_sigmas_start_at_the_target_after_the_shift_on_the_trained_spacing(steps, subject):
    from diffusers.pipelines.flux2.pipeline_flux2_klein_inpaint import compute_empirical_mu

    scheduler = flow_scheduler()
    mu = compute_empirical_mu(image_seq_len=4096, num_steps=steps)
    sigmas = flow_sigmas(scheduler, steps, start_snr(subject), mu)
    assert len(sigmas) == steps
    shifted = copy.deepcopy(scheduler)
    shifted.set_timesteps(sigmas=sigmas, mu=mu)
    assert float(shifted.sigmas[0]) == pytest.approx(flow_sigma(start_snr(subject)), abs=1e-6)
    # uniform in unshifted time from the start level down, as the pipeline's default linspace(1, 1/n, n)
    assert np.allclose(np.asarray(sigmas) / sigmas[0], np.linspace(1.0, 1.0 / steps, steps))
    if subject == 0.0:
        assert np.allclose(sigmas, np.linspace(1.0, 1.0 / steps, steps))


# ---------------------------------------------------------------- measured at the denoiser


@pytest.fixture(scope="module")
def sd_engines(tiny_weights):
    engines = {arch: DiffusionEngine(ModelSet(arch, tiny_weights / arch)) for arch in ("sd15", "sdxl")}
    engines["sd15-few-step"] = DiffusionEngine(ModelSet("sd15", tiny_weights / "sd15"), DiffusionOptions(few_step=True))
    return engines


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sd15-few-step"])
@pytest.mark.parametrize("subject", [0.5, 1.0])
def test_sd_denoisers_start_at_one_snr_whatever_the_steps(sd_engines, name, subject):
    engine = sd_engines[name]
    measured = {steps: measure_start(engine, probe_job(steps, subject))["snr"] for steps in (10, 13, 19, 20, 30, 60)}
    values = list(measured.values())
    assert max(values) / min(values) < 1.15, measured
    assert all(abs(np.log(v / start_snr(subject))) < np.log(1.1) for v in values), measured
    plan = engine.start_plan(engine.steps_for(probe_job(30, subject)), subject)
    assert measured[30] == pytest.approx(plan.snr, rel=1e-3), "what the plan says is what the denoiser gets"


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_sd_subject_zero_starts_from_pure_noise(sd_engines, name):
    for steps in (10, 30):
        assert measure_start(sd_engines[name], probe_job(steps, 0.0))["snr"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["flux2-klein", "flux2-klein-base"])
def test_flux2_denoisers_start_where_sd_does(tiny_flux2_weights, sd_engines, name):
    """At the real models' 1024^2 crops (the shift depends on the token count): the start SNR is SD1.5's at 30
    steps for the same subject_strength, at every step count; the transformer's first timestep is that sigma (the
    pipeline hands it timestep / 1000)."""
    engine = Flux2Engine(model_set_at(tiny_flux2_weights / name))
    engine.native_side = 1024
    for subject in (0.0, 0.5, 1.0):
        sd15 = measure_start(sd_engines["sd15"], probe_job(30, subject))["snr"]
        for steps in (10, 30) if name.endswith("base") else (10,):
            start = measure_start(engine, probe_job(steps, subject))
            if subject == 0.0:
                assert start["snr"] == pytest.approx(0.0, abs=1e-4)
                continue
            assert abs(np.log(start["snr"] / sd15)) < np.log(1.1), (subject, steps, start["snr"], sd15)
            sigma = start["noise"] / (start["signal"] + start["noise"])
            assert start["first_timestep"] == pytest.approx(sigma, rel=1e-3)
