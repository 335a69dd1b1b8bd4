"""NAG beside diffusers' own hooks: layer skip (what the PAG / SLG / SEG guiders install) on a NAG-applied model."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import HookRegistry, LayerSkipConfig, apply_layer_skip

import nag_guidance as nag
from tests.integration.helpers import first_tensor, relative_diff
from tests.integration.joint_cases import BY_ID

NAG = {"nag_negative_prompt": "blue", "nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}
SKIP_HOOK = "layer_skip_hook"


def _run(pipe, case, **nag_args) -> torch.Tensor:
    out = pipe(prompt="a red car", generator=torch.Generator().manual_seed(0), **case.kwargs(), **nag_args)
    return first_tensor(out[0])


def _skip_first_block(pipe, scores: bool) -> None:
    config = LayerSkipConfig(indices=[0], fqn="auto", skip_attention=not scores, skip_attention_scores=scores)
    config.skip_ff = False
    apply_layer_skip(pipe.transformer, config)


def _unskip(pipe) -> None:
    for module in pipe.transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry) and registry.get_hook(SKIP_HOOK) is not None:
            registry.remove_hook(SKIP_HOOK)


# stock diffusers 0.42 skips Qwen-Image's attention only by scores (its processor-output skip returns one tensor
# where the block expects two); Z-Image takes both
@pytest.mark.parametrize(("case_id", "scores"), [("qwen-image", True), ("z-image", True), ("z-image", False)])
def test_layer_skip_on_a_nag_applied_model(case_id: str, scores: bool) -> None:
    case = BY_ID[case_id]
    pipe = case.make()
    stock = _run(pipe, case)
    _skip_first_block(pipe, scores)
    stock_skipped = _run(pipe, case)
    _unskip(pipe)
    assert relative_diff(stock_skipped, stock) > 1e-3  # the skip acts on the stock model

    nag.apply(pipe)
    guided = _run(pipe, case, **NAG)
    _skip_first_block(pipe, scores)  # diffusers looks the NAG processor's class up in its registry: must not raise
    assert relative_diff(_run(pipe, case), stock_skipped) < 1e-6  # NAG idle: exactly the stock skip
    guided_skipped = _run(pipe, case, **NAG)
    assert pipe.nag_report.active
    assert relative_diff(guided_skipped, stock_skipped) > 1e-3
    assert relative_diff(guided_skipped, guided) > 1e-3
    _unskip(pipe)
    assert relative_diff(_run(pipe, case, **NAG), guided) < 1e-6
