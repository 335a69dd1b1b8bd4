"""What `nag eval` measures: prompt/negative pairs whose negative names an attribute the prompt leaves open, and
the generation conditions (method × parameters × steps) to compare on them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nag_guidance.config import get_preset
from nag_guidance.eval.seeds import REPORTING_SEED_START, TUNING_SEED_START, seed_list, seed_range_text
from nag_guidance.tiny import data

__all__ = ["REPORTING_SEED_START", "TUNING_SEED_START", "seed_list", "seed_range_text"]  # the seed ranges' home

KINDS = ("colour", "shape", "background", "colour-bg")
"""The core kinds: the negative names one value of an attribute the prompt leaves open (the parameter sweeps run
on these)."""
BROAD_KINDS = ("multi", "conjunctive", "contrast", "empty")
"""Harder and odder cases, for the method comparison: a negative of several values ("red, blue, green"), a
conjunctive one ("red circle": both at once), one contrasting with what the prompt fixes ("a red circle" −
"blue": nothing to remove, the prompt must survive), and the empty prompt ("" − "red")."""
FAILURE_KINDS = ("luminance", "inert")
"""Where NAG is known to fail or cost: a white or black negative against the opposite background ("a square on a
black background" − "white") and colour triples with white or black ("a circle" − "white, black, red"), where
pushing away from a luminance extreme can fade the subject itself; and inert negatives, words the model cannot
read (out of its vocabulary: "blurry", "ugly") or an attribute without a value ("background"), which have nothing
to remove and can only cost adherence or clean images."""
ALL_KINDS = KINDS + BROAD_KINDS + FAILURE_KINDS
INERT_NEGATIVES = ("blurry", "ugly", "background")
"""The inert negatives: two words outside both embedded models' vocabularies (their tokenizers spell them out in
characters) and the attribute word alone."""
UNQUALIFIED = ("colour", "colour-bg", "multi", "contrast", "empty", "luminance")
"""Kinds whose negative is a bare colour ("red"): it counts as shown wherever that colour appears, on the shape or
on the background (a user who types "red" wants no red); the tables split the two slots. A negative that names its
slot ("red background", "red circle") counts in that slot only."""

ATTRIBUTE = {
    "colour": "colour",
    "shape": "shape",
    "background": "background",
    "colour-bg": "colour",
    "multi": "colour",
    "conjunctive": "colour",
    "contrast": "colour",
    "empty": "colour",
    "luminance": "colour",
    "inert": "colour",
}
"""The attribute whose read-out distribution a kind reports (entropy). ``colour-bg`` is ``colour`` with the
background given in the prompt: a longer, more specific prompt, as in the main job's "a circle on a white
background" − "red"."""


@dataclass(frozen=True)
class Pair:
    """A prompt and a negative; ``avoid`` says what showing the negative means: every (attribute, values) entry
    reads one of its values (one entry with one value for the core kinds)."""

    kind: str  # one of ALL_KINDS
    prompt: str
    negative: str
    target: data.Spec  # what the prompt asks for (adherence)
    avoid: tuple[tuple[str, tuple[str, ...]], ...]  # empty: an inert negative, never shown
    anywhere: bool = False  # a bare colour: also shown when the background has it

    def shown_in(self, read) -> tuple[bool, bool]:
        """(shown in the named slot, shown on the background only because the colour is anywhere), with
        ``read(attribute)`` the value read for an attribute."""
        named = bool(self.avoid) and all(read(attribute) in values for attribute, values in self.avoid)
        elsewhere = self.anywhere and read("background") in self.avoid[0][1]
        return named, elsewhere

    def shows_negative(self, sample: data.Sample) -> bool:
        return any(self.shown_in(lambda attribute: getattr(sample, attribute)))


def _pair(kind: str, prompt: str, negative: str, target: data.Spec, **avoid: str | tuple[str, ...]) -> Pair:
    entries = tuple((name, (v,) if isinstance(v, str) else v) for name, v in avoid.items())
    return Pair(kind, prompt, negative, target, entries, anywhere=kind in UNQUALIFIED)


def check_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """``kinds`` if it names at least one kind and only known ones, else a ``ValueError``: before any model is
    loaded, since an empty selection would only fail at the report."""
    if not kinds:
        raise ValueError(f"no kind selected (kinds, --kinds, is empty); allowed: {', '.join(ALL_KINDS)}")
    unknown = [kind for kind in kinds if kind not in ALL_KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; allowed: {', '.join(ALL_KINDS)}")
    return kinds


def pairs(kinds: tuple[str, ...] = KINDS, quick: bool = False) -> list[Pair]:
    """Every pair of the suite, in a fixed order. Colour: "a circle" − "red"; shape: "a red shape" − "circle";
    background: "a circle" − "blue background"; colour-bg: "a circle on a white background" − "red" (a fixed
    background per pair, never the negative's colour); multi: "a circle" − "red, blue, green"; conjunctive:
    "white background" − "red circle"; contrast: "a red circle" − "blue"; empty: "" − "red"."""
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; allowed: {', '.join(ALL_KINDS)}")
    shapes, colours = (data.SHAPES[:1], data.COLOURS[:4]) if quick else (data.SHAPES, data.COLOURS)
    palette = data.COLOURS

    def shifted(colour: str, by: int) -> str:
        return palette[(palette.index(colour) + by) % len(palette)]

    result = []
    for kind in kinds:
        if kind == "colour":
            result += [_pair(kind, f"a {s}", c, data.Spec(shape=s), colour=c) for s in shapes for c in colours]
        elif kind == "shape":
            result += [
                _pair(kind, f"a {c} shape", s, data.Spec(colour=c), shape=s) for c in colours for s in data.SHAPES
            ]
        elif kind == "colour-bg":
            for i, s in enumerate(shapes):
                for c in colours:
                    b = shifted(c, 6 - 2 * i)
                    target = data.Spec(shape=s, background=b)
                    result.append(_pair(kind, f"a {s} on a {b} background", c, target, colour=c))
        elif kind == "background":
            result += [
                _pair(kind, f"a {s}", f"{c} background", data.Spec(shape=s), background=c)
                for s in shapes
                for c in colours
            ]
        elif kind == "multi":
            for s in shapes:
                for c in colours:
                    three = (c, shifted(c, 1), shifted(c, 2))
                    result.append(_pair(kind, f"a {s}", ", ".join(three), data.Spec(shape=s), colour=three))
        elif kind == "conjunctive":
            for i, s in enumerate(shapes):
                for c in colours:
                    b = shifted(c, 5 + i)
                    prompt, target = f"{b} background", data.Spec(background=b)
                    result.append(_pair(kind, prompt, f"{c} {s}", target, colour=c, shape=s))
        elif kind == "contrast":
            for s in shapes:
                for c in colours:
                    other = shifted(c, 3)
                    result.append(_pair(kind, f"a {c} {s}", other, data.Spec(shape=s, colour=c), colour=other))
        elif kind == "luminance":
            for s in shapes:
                for negative, background in (("white", "black"), ("black", "white")):
                    target = data.Spec(shape=s, background=background)
                    result.append(_pair(kind, f"a {s} on a {background} background", negative, target, colour=negative))
                for c in ("blue", "purple", "white", "black"):  # the palette's triples that hold white or black
                    three = (c, shifted(c, 1), shifted(c, 2))
                    result.append(_pair(kind, f"a {s}", ", ".join(three), data.Spec(shape=s), colour=three))
        elif kind == "inert":
            for i, s in enumerate(shapes):
                c, b = palette[(3 * i) % len(palette)], palette[(3 * i + 4) % len(palette)]
                for negative in INERT_NEGATIVES:
                    result.append(_pair(kind, f"a {s}", negative, data.Spec(shape=s)))
                    full = data.Spec(shape=s, colour=c, background=b)
                    result.append(_pair(kind, f"a {c} {s} on a {b} background", negative, full))
        else:  # empty
            result += [_pair(kind, "", c, data.Spec(), colour=c) for c in colours]
    return result


@dataclass(frozen=True)
class Condition:
    """One way of generating: method, step count, embedded model and its denoiser (student / teacher), and the
    guidance parameters (``pooled``: NAG's pooled choice, tiny-flux only; CFG on tiny-flux is true CFG)."""

    method: str  # "none", "cfg", "nag", "nag+cfg" or "vsf" (``scale`` is VSF's value scale)
    steps: int
    unet: str = "student"
    cfg_scale: float | None = None
    scale: float | None = None
    tau: float | None = None
    alpha: float | None = None
    model: str = "tiny"
    pooled: str | None = None
    end: float = 1.0  # NAG's window end (a fraction of the schedule)
    tau_mode: str = "fixed"  # "relative": τ times the layer's median per-token ratio (``eval.options``)
    operator: str = "paper"  # an evaluation-only candidate operator of ``eval.options.OPERATORS``

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.cfg_scale is not None:
            parts.append(f"w={self.cfg_scale:g}")
        if self.method == "vsf":
            parts.append(f"s={self.scale:g}")
        elif self.scale is not None:
            tau = "inf" if math.isinf(self.tau) else f"{self.tau:g}"
            tau += "×median r" if self.tau_mode == "relative" else ""
            parts.append(f"s={self.scale:g} τ={tau} α={self.alpha:g}")
        if self.operator != "paper":
            parts.append(f"op={self.operator}")
        if self.end < 1.0:
            parts.append(f"end={self.end:g}")
        if self.pooled is not None:
            parts.append(f"pooled={self.pooled}")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


SWEEP_CENTRE = (5.0, 10.0, 0.5)
"""(s, τ, α) around which scale, τ and α are swept one at a time: where an earlier probe of a tiny model found NAG
working (τ ≈ 10, α ≈ 0.5). Fixed, so that changing the presets does not change what the sweep measures; the
embedded model's preset is a second centre."""


def _one_at_a_time(centre: tuple[float, float, float]) -> set[tuple[float, float, float]]:
    s, t, a = centre
    points = {(scale, t, a) for scale in (3.0, s, 8.0)}
    points |= {(s, tau, a) for tau in (2.5, 5.0, t, math.inf)}
    points |= {(s, t, alpha) for alpha in (0.25, a, 1.0)}
    return points


def flux_conditions(quick: bool = False) -> list[Condition]:
    """tiny-flux (student): none, true CFG, VSF, and NAG at the model's preset with the prompt's and with the
    negative's pooled vector, at 1, 2 and 4 steps (quick: 1 step, no CFG or VSF)."""
    config = get_preset("tiny-flux").config
    nag = dict(scale=config.scale, tau=config.tau, alpha=config.alpha, model="tiny-flux")
    result = []
    for steps in (1,) if quick else (1, 2, 4):
        result.append(Condition("none", steps, model="tiny-flux"))
        if not quick:
            result.append(Condition("cfg", steps, cfg_scale=3.0, model="tiny-flux"))
        result += [Condition("nag", steps, pooled=pooled, **nag) for pooled in ("prompt", "negative")]
        if not quick:
            result.append(Condition("nag+cfg", steps, cfg_scale=3.0, pooled="prompt", **nag))
            result.append(Condition("vsf", steps, scale=FLUX_VSF_SCALE, model="tiny-flux"))
    return result


FLUX_VSF_SCALE = 0.25
"""VSF's value scale on tiny-flux, by the same worst-kind rule (docs/preset-sweep-tiny-flux.md): the smallest swept;
every scale loses a quarter or more of the prompt's adherence there."""

VSF_SCALE = 1.0
"""VSF's value scale on the embedded UNet model (the paper gives none for UNets), chosen by the same worst-kind rule
as the ``tiny`` preset (``eval.sweep``, docs/preset-sweep.md)."""


def compared(condition: Condition) -> bool:
    """Whether a condition is one of the method comparison's (run on every kind): none, CFG 3, VSF, NAG at the
    model's preset and NAG at the preset under CFG 3. The other ones are sweeps, run on the core ``KINDS``."""
    if condition.model == "tiny-flux" or condition.method in ("none", "vsf"):
        return True
    if condition.method == "cfg":
        return condition.cfg_scale == 3.0
    tiny = get_preset("tiny").config
    return condition.method in ("nag", "nag+cfg") and (condition.scale, condition.tau, condition.alpha) == (
        tiny.scale,
        tiny.tau,
        tiny.alpha,
    )


def conditions(quick: bool = False) -> list[Condition]:
    """None, CFG at several scales, VSF, NAG at the preset and NAG + CFG at the preset, at 1, 2 and 4 student
    steps, with NAG also swept in scale, τ and α at 4 steps (one at a time around ``SWEEP_CENTRE`` and around the
    embedded model's preset); none, CFG, NAG and NAG + CFG at the preset on the 25-step teacher."""
    tiny = get_preset("tiny").config
    preset = (tiny.scale, tiny.tau, tiny.alpha)
    if quick:
        return [
            Condition("none", 1),
            Condition("cfg", 1, cfg_scale=3.0),
            Condition("nag", 1, scale=preset[0], tau=preset[1], alpha=preset[2]),
        ]
    nag = _one_at_a_time(SWEEP_CENTRE) | _one_at_a_time(preset)
    result = []
    for steps in (1, 2, 4):
        result.append(Condition("none", steps))
        result += [Condition("cfg", steps, cfg_scale=w) for w in (1.5, 3.0, 5.0)]
        result.append(Condition("vsf", steps, scale=VSF_SCALE))
        swept = sorted(nag) if steps == 4 else [preset]
        result += [Condition("nag", steps, scale=x, tau=y, alpha=z) for x, y, z in swept]
        result.append(Condition("nag+cfg", steps, cfg_scale=3.0, scale=preset[0], tau=preset[1], alpha=preset[2]))
    # the 25-step teacher costs ~6x a 4-step run per condition: the comparison points only
    result += [
        Condition("none", 25, "teacher"),
        Condition("cfg", 25, "teacher", cfg_scale=3.0),
        Condition("cfg", 25, "teacher", cfg_scale=5.0),
        Condition("nag", 25, "teacher", scale=preset[0], tau=preset[1], alpha=preset[2]),
        Condition("nag+cfg", 25, "teacher", cfg_scale=3.0, scale=preset[0], tau=preset[1], alpha=preset[2]),
    ]
    return result
