"""Metric functions on constructed inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nag_guidance.eval import metrics
from nag_guidance.eval.suite import ATTRIBUTE, KINDS, conditions, pairs
from nag_guidance.tiny import data


def test_rate_and_standard_error():
    p, se = metrics.rate(np.array([True] * 30 + [False] * 70))
    assert p == pytest.approx(0.3)
    assert se == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
    assert metrics.rate(np.ones(5, bool)) == (1.0, 0.0)
    with pytest.raises(ValueError):
        metrics.rate(np.array([], bool))


def test_suppression_is_relative_to_the_baseline():
    assert metrics.suppression(0.0, 0.2) == 1.0
    assert metrics.suppression(0.2, 0.2) == 0.0
    assert metrics.suppression(0.05, 0.2) == pytest.approx(0.75)
    assert metrics.suppression(0.3, 0.2) == pytest.approx(-0.5)  # more of the negative than without guidance
    assert metrics.suppression(0.1, 0.0) is None


def test_entropy_bits():
    assert metrics.entropy_bits(["a"] * 10) == 0.0
    assert metrics.entropy_bits(["a", "b"] * 5) == pytest.approx(1.0)
    assert metrics.entropy_bits(list("abcdefgh")) == pytest.approx(3.0)
    assert metrics.entropy_bits([]) == 0.0


def test_every_pair_leaves_the_negatives_attribute_open():
    for pair in pairs():
        spec = data.parse_caption(pair.prompt)
        assert spec == pair.target
        attribute = ATTRIBUTE[pair.kind]
        assert getattr(spec, attribute) is None  # the prompt does not fix what the negative names
        negative = data.parse_caption(pair.negative)
        assert getattr(negative, attribute) == pair.value
        if pair.kind == "colour-bg":  # the background is given, and never the negative's colour
            assert spec.background is not None and spec.background != pair.value
    assert {p.kind for p in pairs()} == set(KINDS)
    assert ("a circle on a white background", "red") in {(p.prompt, p.negative) for p in pairs()}  # the main job
    assert len(pairs(("colour",), quick=True)) < len(pairs(("colour",)))


def test_conditions_cover_methods_steps_and_sweeps():
    full = conditions()
    assert {c.method for c in full} == {"none", "cfg", "nag", "nag+cfg"}
    assert {(c.unet, c.steps) for c in full} == {("student", 1), ("student", 2), ("student", 4), ("teacher", 25)}
    nag4 = [c for c in full if c.method == "nag" and c.steps == 4]
    assert len({c.tau for c in nag4}) >= 4 and len({c.alpha for c in nag4}) >= 3 and len({c.scale for c in nag4}) >= 3
    assert len({c.label for c in full if c.steps == 4}) == len([c for c in full if c.steps == 4])
