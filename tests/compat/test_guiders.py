"""NAG beside diffusers' other guiders (PAG, SLG, APG) in a modular pipeline.

A modular pipeline takes one guider, so NAG composes: ``NormalizedAttentionGuidance(base=other_guider)`` runs the
other guider's passes and combination unchanged and guides only its conditional "pred_cond" pass. Each cell records
every denoiser forward of the run (its inputs, output and pass name) and replays it on the stock denoiser: the
conditional passes must equal NAG on those very inputs, the unconditional and perturbed ones the stock (perturbed)
denoiser, so the combined prediction is the other guider's formula on those branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from diffusers import (
    AdaptiveProjectedGuidance,
    PerturbedAttentionGuidance,
    SkipLayerGuidance,
    StableDiffusionXLAutoBlocks,
)
from diffusers.guiders.guider_utils import BaseGuidance
from diffusers.hooks import HookRegistry, LayerSkipConfig, apply_layer_skip
from diffusers.modular_pipelines import Flux2KleinBaseAutoBlocks

import nag_guidance as nag
from nag_guidance import NormalizedAttentionGuidance
from nag_guidance.testing import image, joint
from tests.integration.helpers import first_tensor, relative_diff
from tests.test_guider import _flux2, _modular, _sdxl

NEGATIVE = "blue"
NAG = {"nag_scale": 3.0, "nag_tau": 2.5, "nag_alpha": 0.5}
NAG_CONFIG = nag.NAGConfig(scale=3.0, tau=2.5, alpha=0.5)
SKIP_HOOK = "layer_skip_hook"  # the name apply_layer_skip registers under
# Layer skip (PAG, SLG) is tested on SDXL only: stock diffusers 0.42.1 cannot skip FLUX.2's attention (its
# Flux2Attention has no ``is_cross_attention``, which the layer-skip hook reads). SDXL's UNet has no "auto" block
# list: name its mid-block transformer blocks.
SDXL_BLOCKS = "mid_block.attentions.0.transformer_blocks"


@dataclass
class Family:
    """One modular pipeline built on a tiny stock pipeline's components, and how to run it."""

    stock: object
    pipe: object
    denoiser: torch.nn.Module
    family: str
    run: Callable[[object, BaseGuidance], torch.Tensor]
    negative: Callable[[NormalizedAttentionGuidance], torch.Tensor]


def _family(case: str) -> Family:
    if case == "sdxl":
        stock = image.make_sdxl()
        pipe = _modular(StableDiffusionXLAutoBlocks(), stock)
        return Family(stock, pipe, stock.unet, "sdxl", _sdxl, lambda g: g.encode_negative(pipe, NEGATIVE))
    stock = joint.make_flux2_klein(is_distilled=False)
    pipe = _modular(Flux2KleinBaseAutoBlocks(), stock)
    negative = lambda g: g.encode_negative(pipe, NEGATIVE, max_sequence_length=32)  # noqa: E731
    return Family(stock, pipe, stock.transformer, "flux2", _flux2, negative)


@dataclass
class Forward:
    name: str  # the guider's pass: "pred_cond", "pred_uncond", "pred_cond_skip"
    args: tuple
    kwargs: dict
    output: torch.Tensor


@dataclass
class Recorder:
    """Every denoiser forward of a run, named by the pass the NAG guider says it is."""

    guider: NormalizedAttentionGuidance
    forwards: list[Forward] = field(default_factory=list)

    def pre(self, _module, args, kwargs) -> None:
        name = self.guider._pass_names[self.guider._count_prepared - 1]
        self.forwards.append(Forward(name, args, dict(kwargs), torch.empty(0)))

    def post(self, _module, _args, _kwargs, output) -> None:
        self.forwards[-1].output = first_tensor(output).clone()


def _recorded_run(fam: Family, guider: NormalizedAttentionGuidance) -> tuple[torch.Tensor, list[Forward]]:
    recorder = Recorder(guider)
    hooks = [
        fam.denoiser.register_forward_pre_hook(recorder.pre, with_kwargs=True),
        fam.denoiser.register_forward_hook(recorder.post, with_kwargs=True),
    ]
    try:
        return fam.run(fam.pipe, guider), recorder.forwards
    finally:
        for hook in hooks:
            hook.remove()


def _skip_config(scores: bool) -> LayerSkipConfig:
    return LayerSkipConfig(
        indices=[0], fqn=SDXL_BLOCKS, skip_attention=not scores, skip_attention_scores=scores, skip_ff=False
    )


def _replay(fam: Family, forward: Forward, negative: torch.Tensor, skip: LayerSkipConfig | None) -> torch.Tensor:
    """The recorded forward again on the stock denoiser: NAG-guided for "pred_cond", with the guider's layer skip
    for the perturbed passes, stock otherwise."""
    if forward.name == "pred_cond":
        handle = nag.attach(fam.denoiser, fam.family)
        handle.begin(negative, config=NAG_CONFIG)
        try:
            return first_tensor(fam.denoiser(*forward.args, **forward.kwargs))
        finally:
            handle.end()
            handle.remove()
    if forward.name == "pred_cond_skip":
        apply_layer_skip(fam.denoiser, skip)
        try:
            return first_tensor(fam.denoiser(*forward.args, **forward.kwargs))
        finally:
            for module in fam.denoiser.modules():
                registry = getattr(module, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry) and registry.get_hook(SKIP_HOOK) is not None:
                    registry.remove_hook(SKIP_HOOK)
    return first_tensor(fam.denoiser(*forward.args, **forward.kwargs))


def _assert_only_the_conditional_pass_guided(
    fam: Family, base: BaseGuidance, skip: LayerSkipConfig | None, passes: set[str]
) -> torch.Tensor:
    """Run ``base`` under NAG, replay every pass (see the module docstring); returns the run's latents."""
    guider = NormalizedAttentionGuidance(**NAG, base=base)
    negative = fam.negative(guider)
    latents, forwards = _recorded_run(fam, guider)
    steps = guider.report.steps_total
    assert guider.report.active and guider.report.steps_guided == steps
    guider.remove()  # the stock denoiser again, for the replays
    assert {f.name for f in forwards} == passes
    assert sum(f.name == "pred_cond" for f in forwards) == steps  # one guided pass per step
    for forward in forwards:
        assert relative_diff(forward.output, _replay(fam, forward, negative, skip)) < 1e-5, forward.name
    cond = next(f for f in forwards if f.name == "pred_cond")
    stock_cond = first_tensor(fam.denoiser(*cond.args, **cond.kwargs))
    assert relative_diff(cond.output, stock_cond) > 1e-3  # NAG acted on the conditional pass
    return latents


def _nag_only(fam: Family, guidance_scale: float) -> torch.Tensor:
    """NAG with plain CFG (proven equal to the pipeline door in tests/test_guider.py)."""
    guider = NormalizedAttentionGuidance(guidance_scale=guidance_scale, **NAG)
    fam.negative(guider)
    latents = fam.run(fam.pipe, guider)
    guider.remove()
    return latents


@pytest.mark.compat("Guiders", "PerturbedAttentionGuidance (PAG)", "equal")
@pytest.mark.parametrize("case", ["sdxl"], ids=["sdxl"])
def test_pag_beside_nag(case: str) -> None:
    """PAG with NAG: the conditional pass NAG-guided, the unconditional and perturbed passes stock; PAG scale 0 is
    NAG with CFG."""
    fam = _family(case)
    skip = _skip_config(scores=True)
    pag = {"guidance_scale": 4.0, "perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0}
    base = PerturbedAttentionGuidance(perturbed_guidance_scale=3.0, perturbed_guidance_config=skip, **pag)
    guided = _assert_only_the_conditional_pass_guided(fam, base, skip, {"pred_cond", "pred_uncond", "pred_cond_skip"})
    assert relative_diff(guided, fam.run(fam.pipe, base)) > 1e-3  # against PAG alone

    unperturbed = PerturbedAttentionGuidance(perturbed_guidance_scale=0.0, perturbed_guidance_config=skip, **pag)
    composed = NormalizedAttentionGuidance(**NAG, base=unperturbed)
    fam.negative(composed)
    assert relative_diff(fam.run(fam.pipe, composed), _nag_only(fam, 4.0)) < 1e-5
    composed.remove()


@pytest.mark.compat("Guiders", "SkipLayerGuidance (SLG)", "equal")
@pytest.mark.parametrize("case", ["sdxl"], ids=["sdxl"])
def test_slg_beside_nag(case: str) -> None:
    """SLG with NAG: the conditional pass NAG-guided, the unconditional and layer-skipped passes stock; SLG scale 0
    is NAG with CFG."""
    fam = _family(case)
    skip = _skip_config(scores=False)
    slg = {"guidance_scale": 4.0, "skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 1.0}
    base = SkipLayerGuidance(skip_layer_guidance_scale=2.0, skip_layer_config=skip, **slg)
    _assert_only_the_conditional_pass_guided(fam, base, skip, {"pred_cond", "pred_uncond", "pred_cond_skip"})

    unskipped = SkipLayerGuidance(skip_layer_guidance_scale=0.0, skip_layer_config=skip, **slg)
    composed = NormalizedAttentionGuidance(**NAG, base=unskipped)
    fam.negative(composed)
    assert relative_diff(fam.run(fam.pipe, composed), _nag_only(fam, 4.0)) < 1e-5
    composed.remove()


@pytest.mark.compat("Guiders", "AdaptiveProjectedGuidance (APG)", "equal")
@pytest.mark.parametrize("case", ["sdxl", "flux2-klein"], ids=["sdxl", "flux2-klein"])
def test_apg_beside_nag(case: str) -> None:
    """APG with NAG: the conditional pass NAG-guided, the unconditional pass stock, APG's projection (with its
    momentum across steps) on those."""
    fam = _family(case)
    base = AdaptiveProjectedGuidance(guidance_scale=4.0, adaptive_projected_guidance_momentum=-0.5)
    guided = _assert_only_the_conditional_pass_guided(fam, base, None, {"pred_cond", "pred_uncond"})
    assert relative_diff(guided, fam.run(fam.pipe, base.new())) > 1e-3  # against APG alone


@pytest.mark.compat("Guiders", "base guider with the NAG guider's own CFG", "refused")
@pytest.mark.parametrize("case", ["sdxl"], ids=["sdxl"])
def test_base_guider_refuses_a_second_cfg(case: str) -> None:
    """Two CFGs cannot both apply: base= with the NAG guider's own guidance_scale (or NAG as its own base) is a
    clear error."""
    pag = PerturbedAttentionGuidance(perturbed_guidance_layers=[0])
    with pytest.raises(ValueError, match="with base=..., CFG is the base guider's"):
        NormalizedAttentionGuidance(guidance_scale=5.0, base=pag, **NAG)
    with pytest.raises(ValueError, match="NAG cannot wrap itself"):
        NormalizedAttentionGuidance(base=NormalizedAttentionGuidance(), **NAG)
    composed = NormalizedAttentionGuidance(base=pag, **NAG)
    copy = composed.new(nag_scale=4.0)
    assert copy.nag.scale == 4.0 and copy.base.config == pag.config and "base" not in composed.config
    with pytest.raises(ValueError, match="with base=..., CFG is the base guider's"):
        composed.new(guidance_scale=5.0)
