"""Cells of diffusers' caches (``denoiser.enable_cache(config)``) with NAG on, on Flux (joint attention) and
Wan 2.1 T2V (cross attention), both with CFG on so each cache keeps a guided and a stock branch apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import nag_guidance as nag
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import flops_per_forward, generate, relative_diff
from tests.integration.joint_cases import BY_ID as JOINT

COMPAT_NOTE = """What a cache hit reuses when NAG is on: the caches keep one state per ``cache_context`` ("cond" /
"uncond"), and NAG guides only the conditional pass, so a hit on the conditional pass reuses what NAG computed at
the last computed step. A block cache (FirstBlockCache, MagCache) adds the residual of the skipped blocks from that
step, a guided residual, so the NAG effect carries over; TaylorSeer extrapolates module outputs from guided steps;
PyramidAttentionBroadcast reuses the guided attention output of its last computed step. The unconditional pass
reuses only stock computations. PAB is the exception: it keeps a single attention cache, which serves both CFG
branches of pipelines that run them as separate forwards (Flux's true CFG, Wan), so one branch would reuse the
other's attention; NAG refuses that combination with a clear error (below), and the PAB cells run without CFG.
``nag_report.steps_guided`` counts every conditional denoiser
forward, hit or not. FasterCache is refused: it drops the unconditional half of a batched-CFG forward inside the
denoiser, after NAG has chosen which rows to guide."""

NAG = {"nag_negative_prompt": "blue", "nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}
STEPS = 4  # the caches need computed steps before they can hit
FAMILIES = [JOINT["flux"], CROSS["wan21-t2v"]]
IDS = [case.id for case in FAMILIES]
CFG = {"flux": JOINT["flux"].cfg_kwargs, "wan21-t2v": {"guidance_scale": 3.0}}
NO_CFG = {"flux": {}, "wan21-t2v": {"guidance_scale": 1.0}}

CacheFactory = Callable[[Any], Any]  # pipeline -> cache config


def _pab(pipe: Any, case: Any, timesteps: tuple[int, int]) -> PyramidAttentionBroadcastConfig:
    """PAB on the attention NAG guides: Flux's joint attention (spatial), Wan's cross attention."""
    skip = {"flux": "spatial", "wan21-t2v": "cross"}[case.id]
    return PyramidAttentionBroadcastConfig(
        **{f"{skip}_attention_block_skip_range": 2, f"{skip}_attention_timestep_skip_range": timesteps},
        current_timestep_callback=lambda: pipe.current_timestep,
    )


# TaylorSeer's default patterns match modules named ``attn`` (Flux) but not Wan's ``attn1``/``attn2``: on Wan it
# predicts the cross attention NAG guides.
TAYLOR_SEER_MODULES = {"flux": None, "wan21-t2v": [r"^blocks.*attn2"]}

NEVER_HITS: dict[str, Callable[[Any, Any], Any]] = {
    "FirstBlockCacheConfig": lambda pipe, case: FirstBlockCacheConfig(threshold=0.0),
    "TaylorSeerCacheConfig": lambda pipe, case: TaylorSeerCacheConfig(
        disable_cache_before_step=STEPS + 1, cache_identifiers=TAYLOR_SEER_MODULES[case.id]
    ),
    "MagCacheConfig": lambda pipe, case: MagCacheConfig(
        num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS, retention_ratio=1.0
    ),
    "PyramidAttentionBroadcastConfig": lambda pipe, case: _pab(pipe, case, timesteps=(0, 0)),
}
HITS: dict[str, Callable[[Any, Any], Any]] = {
    "FirstBlockCacheConfig": lambda pipe, case: FirstBlockCacheConfig(threshold=1e9),
    "TaylorSeerCacheConfig": lambda pipe, case: TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=1, cache_identifiers=TAYLOR_SEER_MODULES[case.id]
    ),
    "MagCacheConfig": lambda pipe, case: MagCacheConfig(
        threshold=1e9, num_inference_steps=STEPS, mag_ratios=[1.0] * STEPS, retention_ratio=0.0
    ),
    "PyramidAttentionBroadcastConfig": lambda pipe, case: _pab(pipe, case, timesteps=(-1, 10**4)),
}


def _call(case: Any, cache: str) -> dict:
    """The call arguments: CFG on, except with PAB (see test_pab_with_separate_cfg_passes_is_refused)."""
    cfg = NO_CFG[case.id] if cache == "PyramidAttentionBroadcastConfig" else CFG[case.id]
    return {"num_inference_steps": STEPS, **cfg}


@pytest.mark.compat("Caches", "enable_cache, no hit (FirstBlockCache, TaylorSeer, MagCache, PAB)", "equal")
@pytest.mark.parametrize("cache", list(NEVER_HITS))
@pytest.mark.parametrize("case", FAMILIES, ids=IDS)
def test_cache_that_never_hits_leaves_nag_unchanged(case: Any, cache: str) -> None:
    """A cache configured never to hit (threshold 0, empty skip range) gives NAG's uncached output (1e-6)."""
    pipe = nag.apply(case.make())
    uncached = generate(pipe, case, nag=NAG, **_call(case, cache))
    pipe.transformer.enable_cache(NEVER_HITS[cache](pipe, case))
    cached = generate(pipe, case, nag=NAG, **_call(case, cache))
    assert pipe.nag_report.active and pipe.nag_report.steps_guided == STEPS
    assert relative_diff(cached, uncached) < 1e-6


@pytest.mark.compat("Caches", "enable_cache, with hits (FirstBlockCache, TaylorSeer, MagCache, PAB)", "kept")
@pytest.mark.parametrize("cache", list(HITS))
@pytest.mark.parametrize("case", FAMILIES, ids=IDS)
def test_cache_hits_keep_nag_acting(case: Any, cache: str) -> None:
    """With cache hits NAG stays active and acts: the hits really skip work (fewer FLOPs than uncached NAG), and
    the output differs from the same cached run without NAG."""
    pipe = nag.apply(case.make())
    call = _call(case, cache)
    uncached_flops = sum(flops_per_forward(pipe, case, nag=NAG, **call))
    pipe.transformer.enable_cache(HITS[cache](pipe, case))
    cached_flops = sum(flops_per_forward(pipe, case, nag=NAG, **call))
    guided = generate(pipe, case, nag=NAG, **call)
    report = pipe.nag_report
    assert report.active and report.steps_guided == STEPS and not report.warnings
    assert cached_flops < 0.9 * uncached_flops  # the cache hit
    nag.remove(pipe)
    stock = generate(pipe, case, **call)
    assert relative_diff(guided, stock) > 1e-3


@pytest.mark.compat("Caches", "enable_cache(PyramidAttentionBroadcastConfig) with separate CFG passes", "refused")
@pytest.mark.parametrize("case", FAMILIES, ids=IDS)
def test_pab_with_separate_cfg_passes_is_refused(case: Any) -> None:
    """PAB with CFG run as separate cond and uncond forwards (Flux's true CFG, Wan) makes the NAG call raise a clear
    error before any guided forward shares PAB's cache with an unconditional one; the pipeline stays applied and
    usable.

    PAB's single cache would serve one branch the other's attention: on Flux the guided pass's, whose text stream
    NAG extends with the negative's tokens (it failed with a shape error), on Wan the unconditional pass would
    silently reuse NAG-guided cross attention."""
    pipe = nag.apply(case.make())
    pipe.transformer.enable_cache(HITS["PyramidAttentionBroadcastConfig"](pipe, case))
    call = {"num_inference_steps": STEPS, **CFG[case.id]}
    forwards: list[int] = []
    counting = pipe.transformer.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(ValueError, match="PyramidAttentionBroadcast when CFG's branches are separate"):
        generate(pipe, case, nag=NAG, **call)
    counting.remove()
    # raised before step 1's uncond forward (after its guided cond one)
    assert len(forwards) == 1
    assert nag.is_applied(pipe)
    pipe.transformer.disable_cache()
    generate(pipe, case, nag=NAG, **call)
    assert pipe.nag_report.active and pipe.nag_report.steps_guided == STEPS


@pytest.mark.compat("Caches", "enable_cache(PyramidAttentionBroadcastConfig) with a partial NAG window", "refused")
@pytest.mark.parametrize("window", [{"nag_start": 0.5}, {"nag_end": 0.5}], ids=["late-start", "early-end"])
@pytest.mark.parametrize("case", FAMILIES, ids=IDS)
def test_pab_with_a_partial_window_is_refused_before_any_compute(case: Any, window: dict) -> None:
    """PAB with a window that starts late or ends early, CFG off: refused before any forward, because the broadcast
    would serve a guided step the attention of an unguided one or the reverse (on Flux, after the window, the
    guided attention's text stream is longer: it failed mid-run with a size error; on Wan it would silently reuse
    guided cross attention). The full window still runs cached."""
    pipe = nag.apply(case.make())
    pipe.transformer.enable_cache(HITS["PyramidAttentionBroadcastConfig"](pipe, case))
    call = {"num_inference_steps": STEPS, **NO_CFG[case.id]}
    forwards: list[int] = []
    counting = pipe.transformer.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(ValueError, match="start/end window.*PyramidAttentionBroadcast"):
        generate(pipe, case, nag={**NAG, **window}, **call)
    assert forwards == []
    generate(pipe, case, nag=NAG, **call)
    counting.remove()
    assert pipe.nag_report.active and pipe.nag_report.steps_guided == STEPS


@pytest.mark.compat("Caches", "enable_cache(FasterCacheConfig)", "refused")
@pytest.mark.parametrize("case", [JOINT["cogvideox"]], ids=["cogvideox"])
def test_faster_cache_is_refused(case: Any) -> None:
    """FasterCache (batched CFG only; of the NAG families only CogVideoX runs it stock) makes a NAG call raise a
    clear error before any compute; the stock cached call still runs."""
    pipe = nag.apply(case.make())
    pipe.transformer.enable_cache(FasterCacheConfig(current_timestep_callback=lambda: pipe.current_timestep))
    call = {"num_inference_steps": STEPS, **case.cfg_kwargs}
    with pytest.raises(ValueError, match="FasterCache"):
        generate(pipe, case, nag=NAG, **call)
    assert torch.isfinite(generate(pipe, case, **call)).all()
