"""The start/end window in the NAG authors' units: fractions of the denoising schedule.

The authors' rules are written out here, independently of the package, from their pipelines: Flux stops guiding
at the first step with t < (1 − nag_end)·1000 (t = the scheduler's timestep, 1000·σ), SDXL at the first with
t < floor((1 − nag_end)·999). Scheduler configs are those the real models ship (FLUX.1-dev / -schnell, SDXL base,
SD3.5, Wan 2.1); the denoisers are not needed to count guided steps.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

import nag_guidance as nag
from nag_guidance.config import PRESETS, NAGConfig
from nag_guidance.integration.state import Schedule, schedule_of

from .cases import CASES
from .helpers import generate
from .joint_cases import JOINT_CASES

FLUX_DEV = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)
FLUX_SCHNELL = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
SD35 = dict(num_train_timesteps=1000, shift=3.0)
SDXL = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)
WAN21 = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
    solver_order=2,
)


def flux_timesteps(config: dict, steps: int, size: int = 1024) -> list[float]:
    """As FluxPipeline sets them: sigmas linspace(1, 1/n, n), shifted by mu from the image's token count."""
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    sequence = (size // 16) ** 2
    slope = (config.get("max_shift", 1.15) - config.get("base_shift", 0.5)) / (4096 - 256)
    mu = sequence * slope + config.get("base_shift", 0.5) - slope * 256
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.timesteps.tolist()


def plain_timesteps(cls, config: dict, steps: int) -> list[float]:
    scheduler = cls(**config)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


def authors_flux_steps(timesteps: list[float], end: float) -> int:
    for i, t in enumerate(timesteps):
        if t < (1 - end) * 1000:
            return i
    return len(timesteps)


def authors_sdxl_steps(timesteps: list[float], end: float) -> int:
    for i, t in enumerate(timesteps):
        if t < math.floor((1 - end) * 999):
            return i
    return len(timesteps)


def ours(schedule: Schedule, timesteps: list[float], start: float = 0.0, end: float = 1.0) -> int:
    return sum(schedule.guides(t, start, end) for t in timesteps)


FLOW_SCHEDULES = {
    "flux-dev-25": lambda: flux_timesteps(FLUX_DEV, 25),
    "flux-dev-4": lambda: flux_timesteps(FLUX_DEV, 4),
    "flux-schnell-4": lambda: flux_timesteps(FLUX_SCHNELL, 4),
    "sd35-28": lambda: plain_timesteps(FlowMatchEulerDiscreteScheduler, SD35, 28),
    "sd35-8": lambda: plain_timesteps(FlowMatchEulerDiscreteScheduler, SD35, 8),
    "wan21-25": lambda: plain_timesteps(UniPCMultistepScheduler, WAN21, 25),
    "wan21-4": lambda: plain_timesteps(UniPCMultistepScheduler, WAN21, 4),
}
ENDS = (0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0)


@pytest.mark.parametrize("name", FLOW_SCHEDULES)
@pytest.mark.parametrize("end", ENDS)
def test_flow_schedules_guide_the_steps_of_the_authors_flux_rule(name, end):
    timesteps = FLOW_SCHEDULES[name]()
    assert ours(Schedule(1000, flow=True), timesteps, end=end) == authors_flux_steps(timesteps, end)


@pytest.mark.parametrize("steps", [4, 8, 25, 50])
@pytest.mark.parametrize("end", ENDS)
def test_sdxl_schedules_guide_the_steps_of_the_authors_sdxl_rule(steps, end):
    timesteps = plain_timesteps(EulerDiscreteScheduler, SDXL, steps)
    assert ours(Schedule(1000, flow=False), timesteps, end=end) == authors_sdxl_steps(timesteps, end)


def test_the_issue_examples():
    """FLUX.1-dev at 1024², 25 steps, end 0.25: 13 guided steps (the step-fraction rule gave 7). SDXL, 4 steps,
    end 0.3: 1 step (the step-fraction rule gave 2)."""
    flux = flux_timesteps(FLUX_DEV, 25)
    assert ours(Schedule(1000, True), flux, end=0.25) == 13
    assert sum(i / 25 < 0.25 for i in range(25)) == 7
    sdxl = plain_timesteps(EulerDiscreteScheduler, SDXL, 4)
    assert ours(Schedule(1000, False), sdxl, end=0.3) == 1


def test_start_mirrors_end():
    flux = flux_timesteps(FLUX_DEV, 25)
    late = ours(Schedule(1000, True), flux, start=0.25)
    assert late == sum(t <= 750 for t in flux) == 25 - sum(t > 750 for t in flux)
    assert ours(Schedule(1000, True), flux, start=0.25, end=0.25 + 1e-9) <= 1


@pytest.mark.parametrize(
    "scheduler, flow",
    [
        (FlowMatchEulerDiscreteScheduler(**FLUX_DEV), True),
        (UniPCMultistepScheduler(**WAN21), True),
        (EulerDiscreteScheduler(**SDXL), False),
        (UniPCMultistepScheduler(num_train_timesteps=1000), False),
    ],
    ids=["flow-match", "unipc-flow", "euler-discrete", "unipc-discrete"],
)
def test_schedule_of_reads_the_scheduler_kind(scheduler, flow):
    assert schedule_of(scheduler) == Schedule(1000, flow)


def test_the_kontext_preset_reproduces_the_authors_window():
    """The authors' Kontext setting, nag_end 0.25 on FLUX.1's shifted 25-step schedule: 13 steps, here too."""
    preset = PRESETS["flux-kontext"].config
    assert preset.window == "schedule"
    flux = flux_timesteps(FLUX_DEV, 25)
    assert ours(Schedule(1000, True), flux, preset.start, preset.end) == authors_flux_steps(flux, 0.25) == 13


def test_a_bad_window_is_refused():
    with pytest.raises(ValueError, match="window="):
        NAGConfig(window="sigmas")
    with pytest.raises(ValueError, match="end="):
        NAGConfig(start=0.5, end=0.5)


def _recorded_steps(pipe) -> list[float]:
    """The scheduler timesteps the loop stepped with, recorded at ``scheduler.step`` (scheduler units in every
    pipeline, whatever the denoiser is given). Diffusion-forcing pipelines step a copy of the scheduler per latent
    frame: those copies are recorded too."""
    seen: list[float] = []
    recorded = pipe.scheduler
    per_frame = "DiffusionForcing" in type(pipe).__name__

    def recording(scheduler, model_output, timestep, *args, **kwargs):
        if scheduler is recorded or per_frame:  # not a copy the pipeline made (LTX-2's audio scheduler)
            seen.append(float(torch.as_tensor(timestep).reshape(-1)[0]))
        return type(scheduler).step(scheduler, model_output, timestep, *args, **kwargs)

    recorded.step = types.MethodType(recording, recorded)
    return seen


ALL_CASES = [*CASES, *JOINT_CASES]


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_every_family_reads_its_timestep_in_scheduler_units(case):
    """Each pipeline gives its denoiser the timestep in its own units (t, t/1000, (1000 − t)/1000): a partial
    window guides exactly the steps the rule picks from the scheduler's own timesteps."""
    pipe = case.make()
    nag.apply(pipe)
    seen = _recorded_steps(pipe)
    schedule = schedule_of(pipe.scheduler)
    window = {"nag_negative_prompt": "blurry", "nag_scale": 3.0, "nag_start": 0.2, "nag_end": 0.7}
    generate(pipe, case, nag=window, num_inference_steps=4)
    expected = len({t for t in seen if schedule.guides(t, 0.2, 0.7)})
    assert expected < len(set(seen)) or case.id.endswith("img2img")
    assert pipe.nag_report.steps_guided == expected, (seen, pipe.nag_report)


def test_the_denoiser_door_needs_the_scheduler_for_a_partial_window():
    from nag_guidance.testing import image

    handle = nag.attach(image.make_sd().unet, "sd")
    negative = torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match="scheduler="):
        handle.begin(negative, config=NAGConfig(end=0.5))
    with pytest.raises(ValueError, match="num_steps="):
        handle.begin(negative, config=NAGConfig(end=0.5, window="steps"))
    assert not handle.active
    handle.begin(negative, config=NAGConfig(end=0.5), scheduler=EulerDiscreteScheduler(**SDXL))
    assert handle.active
    with pytest.raises(RuntimeError, match="while a call is running"):
        handle.remove()
    handle.end()
    handle.remove()


WINDOWS = {"schedule": {"nag_end": 0.4}, "steps": {"nag_end": 0.5, "nag_window": "steps"}}


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_heun_guides_the_window_of_its_distinct_steps(window):
    """Heun evaluates most timesteps twice (4 steps: 7 denoiser forwards at 4 distinct timesteps): the window and
    the report count distinct steps, so nag_end=0.5 guides 2 of the 4 in both units (the steps window once
    guided all 7 evaluations and reported "4/7 steps"); the schedule window nag_end=0.4 guides the same 2."""
    from diffusers import HeunDiscreteScheduler

    from nag_guidance.testing import image

    pipe = image.make_sd()
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    nag.apply(pipe)
    seen = _recorded_steps(pipe)
    call = dict(height=16, width=16, num_inference_steps=4, guidance_scale=1.0, output_type="latent")
    negative = {"nag_negative_prompt": "blurry", "nag_scale": 3.0}
    full = pipe("a red car", generator=torch.Generator().manual_seed(0), **call, **negative)[0]
    partial = pipe("a red car", generator=torch.Generator().manual_seed(0), **call, **negative, **WINDOWS[window])[0]
    distinct = sorted(set(seen), reverse=True)
    assert len(seen) // 2 == 7 and len(distinct) == 4
    report = pipe.nag_report
    assert (report.steps_guided, report.steps_total) == (2, 4), report
    if window == "schedule":  # the authors' SDXL rule on the scheduler's own timesteps
        assert sum(t >= math.floor(0.6 * 999) for t in distinct) == 2
    assert (partial - full).abs().max() > 1e-4


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_repeated_sigmas_count_once(window):
    """Custom sigmas with repeats ([1, 1, .5, .5]: two distinct steps) on a flow-matching pipeline: the window and
    the report see 2 steps, and the window guides the first (t = 1000 of 1000 and 500)."""
    case = next(c for c in JOINT_CASES if c.id == "flux")
    pipe = nag.apply(case.make())
    negative = {"nag_negative_prompt": "blurry", "nag_scale": 3.0}
    call = {"sigmas": [1.0, 1.0, 0.5, 0.5], "num_inference_steps": 4}
    full = generate(pipe, case, nag=negative, **call)
    partial = generate(pipe, case, nag={**negative, **WINDOWS[window]}, **call)
    report = pipe.nag_report
    assert (report.steps_guided, report.steps_total) == (1, 2), report
    assert (partial - full).abs().max() > 1e-4
