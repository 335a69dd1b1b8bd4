"""The operator options of ``nag eval``'s option search (``nag_guidance.eval.options``)."""

from __future__ import annotations

import torch

from nag_guidance.eval import options, sweep
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


def test_the_luminance_candidates_are_the_papers_operator_where_they_change_nothing():
    torch.manual_seed(1)
    z_pos, z_neg = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    paper = normalized_attention_guidance_(z_pos.clone(), z_neg, 3.0, 2.0, 0.5)
    # grouped with one group per token is the paper's; orthogonal/centred differ from it only by what they remove
    options.GROUPS, saved = 1, options.GROUPS
    try:
        assert torch.allclose(options.grouped_guidance_(z_pos.clone(), z_neg, 3.0, 2.0, 0.5), paper, atol=1e-6)
    finally:
        options.GROUPS = saved
    shifted = z_neg + torch.randn(2, 1, 16)  # a negative that differs from the prompt by one shared offset
    centred = options.centred_guidance_(z_pos.clone(), z_pos + (shifted - z_neg), 3.0, 2.0, 0.5)
    assert torch.allclose(centred, z_pos, atol=1e-5)  # centring removes a uniform push entirely
    mean = z_pos.mean(dim=1, keepdim=True)
    along = options.orthogonal_guidance_(z_pos.clone(), z_pos - 0.3 * mean, 3.0, float("inf"), 1.0)
    assert torch.allclose(along, z_pos, atol=1e-5)  # a push along the mean output is not extrapolated
    assert not torch.allclose(options.orthogonal_guidance_(z_pos.clone(), z_neg, 3.0, 2.0, 0.5), paper)


def test_grouped_caps_each_channel_group_on_its_own():
    z_pos = torch.ones(1, 2, 16)
    z_neg = z_pos.clone()
    z_neg[..., :2] = -5.0  # the negative moves the first group only
    out = options.grouped_guidance_(z_pos.clone(), z_neg, 3.0, 1.5, 1.0)
    assert torch.allclose(out[..., 2:], z_pos[..., 2:])  # the other groups keep their output
    per_token = normalized_attention_guidance_(z_pos.clone(), z_neg, 3.0, 1.5, 1.0)
    assert not torch.allclose(per_token[..., 2:], z_pos[..., 2:])  # per token, the whole token is rescaled


def _cell_records(label: str, kind: str, negative: float, adherent: float, seeds: int = 4) -> dict:
    from nag_guidance.eval.suite import pairs

    n = len(pairs((kind,))) * seeds
    bits = lambda share: "".join("1" if i < share * n else "0" for i in range(n))  # noqa: E731
    cells = {"negative": bits(negative), "adherent": bits(adherent), "clean": bits(0.5), "named": bits(negative)}
    return {"label": label, "kind": kind, "negative_rate": negative, "adherence": adherent, "clean": 0.5,
            "seeds": [0, seeds], "cells": cells}  # fmt: skip


def test_the_luminance_verdict_needs_a_win_there_and_no_loss_elsewhere():
    preset = options.preset_condition("tiny").label
    candidate = options.luminance_conditions("tiny")[2].label
    base = [_cell_records("none", k, 0.4, 0.9) for k in ("luminance", "colour")]
    records = base + [_cell_records(preset, "luminance", 0.1, 0.7), _cell_records(preset, "colour", 0.05, 0.9)]
    better = [_cell_records(candidate, "luminance", 0.1, 0.9), _cell_records(candidate, "colour", 0.05, 0.9)]
    wins, reasons = options.luminance_verdict(records + better, candidate, preset)
    assert wins and reasons == []
    worse = [_cell_records(candidate, "luminance", 0.1, 0.9), _cell_records(candidate, "colour", 0.1, 0.9)]
    wins, reasons = options.luminance_verdict(records + worse, candidate, preset)
    assert not wins and reasons == ["colour: 12.5 points less suppression"]
    same = [_cell_records(candidate, "luminance", 0.1, 0.7), _cell_records(candidate, "colour", 0.05, 0.9)]
    wins, reasons = options.luminance_verdict(records + same, candidate, preset)
    assert not wins and "not above the preset's" in reasons[0]


def test_stage_one_picks_by_the_rule_not_by_luminance_alone():
    preset = options.preset_condition("tiny").label
    greedy, balanced = (c.label for c in options.luminance_conditions("tiny")[2:4])
    kinds = ("luminance", "colour")
    rows = [("none", 0.4, 0.9, 0.4, 0.9), (preset, 0.2, 0.8, 0.1, 0.9)]
    rows += [(greedy, 0.2, 0.9, 0.4, 0.9), (balanced, 0.2, 0.85, 0.1, 0.9)]  # greedy loses all colour suppression
    records = [
        {"label": label, "kind": kind, "negative_rate": neg, "adherence": adh, "clean": 0.5}
        for label, ln, la, cn, ca in rows
        for kind, neg, adh in (("luminance", ln, la), ("colour", cn, ca))
    ]
    assert {r["kind"] for r in records} == set(kinds)
    table = sweep.changes(records)
    assert options.rule_margin(table, greedy, preset) < 0 < options.rule_margin(table, balanced, preset)
    assert options.best_luminance(records, "tiny") == balanced
