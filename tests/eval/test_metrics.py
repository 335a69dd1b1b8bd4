"""Metric functions on constructed inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nag_guidance.eval import metrics
from nag_guidance.eval.suite import ALL_KINDS, KINDS, conditions, pairs
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


def test_every_pair_leaves_the_negatives_attributes_open():
    for pair in pairs(ALL_KINDS):
        spec = data.parse_caption(pair.prompt)
        assert spec == pair.target
        negative = data.parse_caption(pair.negative)
        for attribute, values in pair.avoid:
            if pair.kind == "contrast":  # the prompt fixes the attribute, to another value than the negative's
                assert getattr(spec, attribute) not in (None, *values)
            else:  # the prompt does not fix what the negative names
                assert getattr(spec, attribute) is None
            if pair.kind == "multi":
                assert pair.negative == ", ".join(values) and len(set(values)) == 3
            else:
                assert getattr(negative, attribute) == values[0] and len(values) == 1
        if pair.kind in ("colour-bg", "conjunctive"):  # the background is given, and never the negative's colour
            assert spec.background is not None and spec.background != dict(pair.avoid)["colour"][0]
    assert {p.kind for p in pairs(ALL_KINDS)} == set(ALL_KINDS) and set(KINDS) < set(ALL_KINDS)
    assert {p.prompt for p in pairs(("empty",))} == {""}
    assert [len(v) for p in pairs(("conjunctive",)) for _, v in p.avoid] == [1, 1] * len(pairs(("conjunctive",)))
    assert ("a circle on a white background", "red") in {(p.prompt, p.negative) for p in pairs()}  # the main job
    assert len(pairs(("colour",), quick=True)) < len(pairs(("colour",)))


def test_a_sample_shows_a_conjunctive_negative_only_with_both_attributes():
    pair = next(p for p in pairs(("conjunctive",)) if p.negative == "red circle")
    make = lambda shape, colour: data.Sample(shape, colour, pair.target.background, 0, 0, 8)  # noqa: E731
    assert pair.shows_negative(make("circle", "red"))
    assert not pair.shows_negative(make("circle", "blue")) and not pair.shows_negative(make("square", "red"))


def test_conditions_cover_methods_steps_and_sweeps():
    full = conditions()
    assert {c.method for c in full} == {"none", "cfg", "nag", "nag+cfg", "vsf"}
    assert {(c.unet, c.steps) for c in full} == {("student", 1), ("student", 2), ("student", 4), ("teacher", 25)}
    nag4 = [c for c in full if c.method == "nag" and c.steps == 4]
    assert len({c.tau for c in nag4}) >= 4 and len({c.alpha for c in nag4}) >= 3 and len({c.scale for c in nag4}) >= 3
    assert len({c.label for c in full if c.steps == 4}) == len([c for c in full if c.steps == 4])


def test_the_broad_kinds_run_the_method_comparison_only():
    from nag_guidance.eval.runner import items

    todo = items(False, ALL_KINDS, seeds=1)
    broad = {
        (t.payload["condition"]["label"], t.payload["condition"]["steps"]) for t in todo if t.payload["kind"] == "empty"
    }
    methods = {label.split()[0] for label, _ in broad}
    assert methods == {"none", "cfg", "vsf", "nag"} and {steps for _, steps in broad} == {1, 2, 4}
    assert len(broad) == 4 * 3  # one condition per method and step count: none, CFG 3, VSF, NAG at the preset
    assert len([t for t in todo if t.payload["kind"] == "colour"]) > 3 * len(broad)  # the sweeps: core kinds only
