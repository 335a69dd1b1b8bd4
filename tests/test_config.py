import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import nag_guidance.config as config_module
from nag_guidance.config import MAX_SCALE, PRESETS, NAGConfig, get_preset, preset_rule, register_preset_rule
from nag_guidance.functional import normalized_attention_guidance, normalized_attention_guidance_
from nag_guidance.integration.families import registered_families


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("scale", 0.99, "1 <= scale <= 1000"),
        ("scale", math.inf, "1 <= scale <= 1000"),
        ("scale", math.nan, "1 <= scale <= 1000"),
        ("scale", 1e300, "1 <= scale <= 1000"),
        ("scale", 1000.5, "1 <= scale <= 1000"),
        ("tau", 0.0, "tau > 0"),
        ("tau", -1.0, "tau > 0"),
        ("alpha", -0.1, "0 <= alpha <= 1"),
        ("alpha", 1.01, "0 <= alpha <= 1"),
        ("start", -0.1, "0 <= start < end <= 1"),
        ("start", 1.0, "0 <= start < end <= 1"),
        ("end", 1.5, "< end <= 1"),
    ],
)
def test_each_violation_names_parameter_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        NAGConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{field}={value}")
    assert allowed in message


def test_start_must_precede_end():
    with pytest.raises(ValueError, match=r"end=0.5 .* start \(0.5\) < end"):
        NAGConfig(start=0.5, end=0.5)


@pytest.mark.parametrize("value", ["5", None, True, 5 + 0j, [5.0]])
def test_non_numbers_rejected(value):
    with pytest.raises(ValueError, match="expected a real number"):
        NAGConfig(scale=value)


@pytest.mark.parametrize(
    "value", [np.float32(5.0), np.float64(5.0), np.int64(5), np.array(5.0), torch.tensor(5.0), Fraction(5, 1)]
)
def test_real_numbers_of_any_kind_are_accepted(value):
    config = NAGConfig(scale=value, tau=value)
    assert config.scale == 5.0 and type(config.scale) is float and type(config.tau) is float


@pytest.mark.parametrize(
    ("dtype", "tau"), [(torch.float32, 2.5), (torch.float16, 2.5), (torch.bfloat16, 2.5), (torch.float32, math.inf)]
)
@pytest.mark.parametrize("in_place", [False, True])
def test_operator_is_finite_at_the_largest_accepted_scale(dtype, tau, in_place):
    """With a cap the output stays within τ·‖Z+‖₁ per token in every dtype; uncapped, fp32 still holds it."""
    z_pos = (torch.randn(2, 64, 32) * 100).to(dtype)
    z_neg = -z_pos  # the worst case: Z~ = (2s − 1)·Z+
    op = normalized_attention_guidance_ if in_place else normalized_attention_guidance
    out = op(z_pos.clone(), z_neg, MAX_SCALE, tau, 1.0)
    assert torch.isfinite(out.float()).all()


def test_defaults_and_activity():
    assert NAGConfig().active
    assert not NAGConfig(scale=1).active
    assert not NAGConfig(alpha=0).active
    assert NAGConfig(tau=math.inf).tau == math.inf  # no cap is allowed


def test_with_overrides_validates_and_ignores_none():
    base = NAGConfig(scale=3)
    assert base.with_overrides(scale=None, alpha=0.5) == NAGConfig(scale=3, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        base.with_overrides(alpha=2)


def test_presets_table_is_consistent():
    families = registered_families()
    for family in families.values():
        if isinstance(family.preset, str):
            assert family.preset in PRESETS, family.name
    flux = get_preset("flux-schnell")
    assert (flux.config.scale, flux.config.tau, flux.config.alpha, flux.steps) == (5, 2.5, 0.25, 4)
    wan4 = get_preset("wan-4step")
    assert (wan4.config.scale, wan4.config.tau, wan4.config.alpha) == (11, 3.5, 0.5)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_preset_rules_pick_a_preset_before_the_family():
    marker = object()

    def rule(pipe):
        return "wan-4step" if pipe is marker else None

    register_preset_rule(rule)
    register_preset_rule(rule)  # registering twice keeps one
    try:
        assert preset_rule(marker) == "wan-4step" and preset_rule(object()) is None
    finally:
        config_module._PRESET_RULES.remove(rule)
    assert rule not in config_module._PRESET_RULES
