"""What `nag eval` measures: prompt/negative pairs whose negative names an attribute the prompt leaves open, and
the generation conditions (method × parameters × steps) to compare on them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nag_guidance.config import get_preset
from nag_guidance.tiny import data

KINDS = ("colour", "shape", "background", "colour-bg")
ATTRIBUTE = {"colour": "colour", "shape": "shape", "background": "background", "colour-bg": "colour"}
"""The procedural attribute each kind's negative names. ``colour-bg`` is ``colour`` with the background given in
the prompt: a longer, more specific prompt, as in the main job's "a circle on a white background" − "red"."""


@dataclass(frozen=True)
class Pair:
    """A prompt and a negative naming one value of an attribute the prompt leaves open."""

    kind: str  # one of KINDS; ATTRIBUTE[kind] is the attribute the negative names
    prompt: str
    negative: str
    target: data.Spec  # what the prompt asks for (adherence)
    value: str  # the attribute value the negative names


def pairs(kinds: tuple[str, ...] = KINDS, quick: bool = False) -> list[Pair]:
    """Every pair of the suite, in a fixed order. Colour: "a circle" − "red"; shape: "a red shape" − "circle";
    background: "a circle" − "blue background"; colour-bg: "a circle on a white background" − "red" (a fixed
    background per pair, never the negative's colour)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; allowed: {', '.join(KINDS)}")
    shapes, colours = (data.SHAPES[:1], data.COLOURS[:4]) if quick else (data.SHAPES, data.COLOURS)
    result = []
    for kind in kinds:
        if kind == "colour":
            result += [Pair(kind, f"a {s}", c, data.Spec(shape=s), c) for s in shapes for c in colours]
        elif kind == "shape":
            result += [Pair(kind, f"a {c} shape", s, data.Spec(colour=c), s) for c in colours for s in data.SHAPES]
        elif kind == "colour-bg":
            for i, s in enumerate(shapes):
                for c in colours:
                    b = data.COLOURS[(data.COLOURS.index(c) + 6 - 2 * i) % len(data.COLOURS)]
                    result.append(Pair(kind, f"a {s} on a {b} background", c, data.Spec(shape=s, background=b), c))
        else:
            result += [Pair(kind, f"a {s}", f"{c} background", data.Spec(shape=s), c) for s in shapes for c in colours]
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

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.cfg_scale is not None:
            parts.append(f"w={self.cfg_scale:g}")
        if self.method == "vsf":
            parts.append(f"s={self.scale:g}")
        elif self.scale is not None:
            tau = "inf" if math.isinf(self.tau) else f"{self.tau:g}"
            parts.append(f"s={self.scale:g} τ={tau} α={self.alpha:g}")
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
    """tiny-flux (student): none, true CFG, and NAG at the model's preset with the prompt's and with the
    negative's pooled vector, at 1, 2 and 4 steps (quick: 1 step, no CFG)."""
    from nag_guidance.integration.registry import registered_families

    # tiny-flux has no preset of its own yet: the flux family's rule for a model without guidance embeds
    config = get_preset(registered_families()["flux"].preset_for(None)).config
    nag = dict(scale=config.scale, tau=config.tau, alpha=config.alpha, model="tiny-flux")
    result = []
    for steps in (1,) if quick else (1, 2, 4):
        result.append(Condition("none", steps, model="tiny-flux"))
        if not quick:
            result.append(Condition("cfg", steps, cfg_scale=3.0, model="tiny-flux"))
        result += [Condition("nag", steps, pooled=pooled, **nag) for pooled in ("prompt", "negative")]
    return result


def conditions(quick: bool = False) -> list[Condition]:
    """None, CFG at several scales, NAG swept in scale, τ and α (one at a time around ``SWEEP_CENTRE`` and around
    the embedded model's preset), and NAG + CFG at the preset, at 1, 2 and 4 student steps; none, CFG, NAG and NAG + CFG
    at the preset on the 25-step teacher."""
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
        result += [Condition("nag", steps, scale=x, tau=y, alpha=z) for x, y, z in sorted(nag)]
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
