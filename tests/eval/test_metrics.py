"""Metric functions on constructed inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nag_guidance.eval import metrics
from nag_guidance.eval.suite import ALL_KINDS, INERT_NEGATIVES, KINDS, conditions, pairs
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
            if pair.kind == "multi" or "," in pair.negative:
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


def test_the_failure_kinds_hold_luminance_extremes_and_inert_negatives():
    luminance = pairs(("luminance",))
    singles = [p for p in luminance if "," not in p.negative]
    assert {(p.negative, p.target.background) for p in singles} == {("white", "black"), ("black", "white")}
    assert all({"white", "black"} & set(dict(p.avoid)["colour"]) for p in luminance)
    inert = pairs(("inert",))
    assert inert and all(p.avoid == () for p in inert) and {p.negative for p in inert} == set(INERT_NEGATIVES)
    assert not any(p.shows_negative(data.Sample("circle", "red", "blue", 0, 0, 8)) for p in inert)


def test_the_inert_words_are_outside_both_vocabularies():
    from nag_guidance.tiny import load_pipeline

    for model in ("tiny", "tiny-flux"):
        pipe = load_pipeline(model=model)
        for tokenizer in [pipe.tokenizer, getattr(pipe, "tokenizer_2", None)]:
            if tokenizer is None:
                continue
            for word in INERT_NEGATIVES:
                whole = len(tokenizer.tokenize(word)) == 1
                assert whole == (word == "background"), (model, word, tokenizer.tokenize(word))


def test_a_bare_colour_counts_anywhere_and_a_named_slot_only_there():
    colour = next(p for p in pairs(("colour",)) if p.negative == "red")
    background = next(p for p in pairs(("background",)) if p.negative == "red background")
    red_bg = data.Sample("circle", "blue", "red", 0, 0, 8)
    red_shape = data.Sample("circle", "red", "blue", 0, 0, 8)
    assert colour.shows_negative(red_bg) and colour.shows_negative(red_shape)
    assert colour.shown_in(lambda a: getattr(red_bg, a)) == (False, True)  # the split the tables show
    assert background.shows_negative(red_bg) and not background.shows_negative(red_shape)
    conjunctive = next(p for p in pairs(("conjunctive",)) if p.negative == "red circle")
    assert not conjunctive.anywhere


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
    assert methods == {"none", "cfg", "vsf", "nag", "nag+cfg"} and {steps for _, steps in broad} == {1, 2, 4}
    assert len(broad) == 5 * 3  # per method and step count: none, CFG 3, VSF, NAG and NAG + CFG 3 at the preset
    assert len([t for t in todo if t.payload["kind"] == "colour"]) > 2 * len(broad)  # the sweeps: core kinds only
