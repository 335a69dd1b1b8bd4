"""The operator options of ``nag eval``'s option search (``nag_guidance.eval.options``)."""

from __future__ import annotations

import torch

from nag_guidance.eval import options
from nag_guidance.eval.suite import KINDS, Condition
from nag_guidance.functional import guidance_ratio, normalized_attention_guidance_
from nag_guidance.integration import state


def test_relative_tau_caps_each_token_at_a_multiple_of_its_images_median_ratio():
    torch.manual_seed(0)
    z_pos, z_neg = torch.randn(2, 9, 8), torch.randn(2, 9, 8)
    out, ratio = options.relative_tau_guidance_(z_pos.clone(), z_neg, 5.0, 0.5, 1.0, return_ratio=True)
    tilde = 5.0 * z_pos - 4.0 * z_neg
    assert torch.allclose(ratio, guidance_ratio(z_pos, tilde))
    cap = 0.5 * ratio.median(dim=1, keepdim=True).values  # one cap per image
    assert not torch.equal(cap[0], cap[1])
    expected = torch.where(ratio > cap, tilde * cap / ratio, tilde)
    assert torch.allclose(out, expected, atol=1e-5)


def test_relative_tau_without_a_cap_is_the_papers_operator():
    z_pos, z_neg = torch.randn(3, 7, 4), torch.randn(3, 7, 4)
    relative = options.relative_tau_guidance_(z_pos.clone(), z_neg, 3.0, 1e9, 0.5)
    assert torch.allclose(relative, normalized_attention_guidance_(z_pos.clone(), z_neg, 3.0, float("inf"), 0.5))


def test_the_option_is_swapped_in_for_the_block_only_and_labelled():
    original = state.normalized_attention_guidance_
    with options.relative_tau():
        assert state.normalized_attention_guidance_ is options.relative_tau_guidance_
    assert state.normalized_attention_guidance_ is original
    condition = Condition("nag", 4, scale=5.0, tau=0.5, alpha=0.5, tau_mode="relative")
    assert condition.label == "nag s=5 τ=0.5×median r α=0.5"
    assert Condition("nag", 4, scale=5.0, tau=0.5, alpha=0.5).label == "nag s=5 τ=0.5 α=0.5"


def _records(label: str, negative: float, adherence: float) -> list[dict]:
    return [
        {"label": label, "kind": kind, "negative_rate": negative, "adherence": adherence, "clean": 0.5}
        for kind in KINDS
    ]


def test_stage_two_confirms_the_best_relative_tau_against_the_preset_and_gives_the_verdict():
    preset = options.preset_condition("tiny").label
    relative = [c.label for c in options.conditions("tiny") if c.tau_mode == "relative"]
    coarse = _records("none", 0.4, 0.9) + _records(preset, 0.2, 0.9)
    coarse += _records(relative[0], 0.05, 0.9) + _records(relative[1], 0.1, 0.9)  # [0] wins stage 1
    confirmed = [c.label for c in options.confirmation("tiny", coarse)]
    assert confirmed == ["none", preset, relative[0]]
    final = _records("none", 0.4, 0.9) + _records(preset, 0.1, 0.9) + _records(relative[0], 0.2, 0.9)
    page = options.page({"tiny": (coarse, final)}, "python -m nag_guidance.eval.options")
    assert f"**The best relative τ ({relative[0]}) does not beat the preset ({preset}) on the worst margin" in page
    final = _records("none", 0.4, 0.9) + _records(preset, 0.2, 0.9) + _records(relative[0], 0.1, 0.9)
    page = options.page({"tiny": (coarse, final)}, "python -m nag_guidance.eval.options")
    assert f"**The best relative τ ({relative[0]}) beats the preset ({preset})" in page
