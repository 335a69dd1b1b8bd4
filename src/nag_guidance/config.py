"""NAG parameters, their validation, and the presets table (the one source of truth for defaults).

Scale convention: ``scale`` is the code convention s used by the authors' pipelines and most UIs,
Z~ = s·Z+ − (s−1)·Z-. The paper writes Z~ = Z+ + φ(Z+ − Z-), so φ = s − 1: the paper's φ = 4 is our
scale = 5. ``scale = 1`` turns NAG off.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

MAX_SCALE = 1000.0
"""Largest accepted scale: far beyond any useful setting (published ones are 2–11), and small enough that every
intermediate of the operator stays finite in fp32 (``functional`` computes Z~ in fp32 for every input dtype)."""


def _number(name: str, value: Any) -> float:
    """Any real number (Python, NumPy, a 0-d tensor); bools and everything else are refused."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d torch / numpy arrays
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is invalid: expected a real number")
    return float(value)


WINDOWS = ("schedule", "steps")
"""Units of ``NAGConfig.start`` / ``end``: fractions of the denoising schedule (default) or of the steps."""

POOLED = ("prompt", "negative")
"""Whose pooled text vector modulates the negative branch, in families whose denoiser takes one: the prompt's
(the negative's text rides in the prompt rows, cheap) or the negative's own (the NAG authors' Flux / Kontext
pipelines and ComfyUI-NAG: the negative branch gets its own rows and, in single-stream blocks, its own copy of
the image tokens)."""


@dataclass(frozen=True)
class NAGConfig:
    """Validated NAG parameters.

    scale: guidance strength s ≥ 1 (1 = off; paper φ = s − 1).
    tau: cap τ > 0 on the per-token norm ratio ‖Z~‖₁/‖Z+‖₁ (``math.inf`` = no cap).
    alpha: blend α ∈ [0, 1] between the guided output (1) and the plain positive one (0).
    start, end: the window where NAG acts, as fractions (0 ≤ start < end ≤ 1) of the denoising *schedule*
    (``window="schedule"``, the NAG authors' rule: e.g. a flow-matching model is guided while its timestep
    t ≥ (1 − end)·1000, i.e. σ ≥ 1 − end) or of the *steps* (``window="steps"``: step i of n is guided while
    start ≤ i/n < end).
    pooled: one of ``POOLED``, or None for the family's default; only for families with a pooled text vector.
    """

    scale: float = 5.0
    tau: float = 2.5
    alpha: float = 0.25
    start: float = 0.0
    end: float = 1.0
    window: str = "schedule"
    pooled: str | None = None

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window={self.window!r} is invalid: expected one of {', '.join(map(repr, WINDOWS))}")
        if self.pooled is not None and self.pooled not in POOLED:
            raise ValueError(f"pooled={self.pooled!r} is invalid: expected one of {', '.join(map(repr, POOLED))}")
        choices = ("window", "pooled")
        values = {f.name: _number(f.name, getattr(self, f.name)) for f in fields(self) if f.name not in choices}
        for name, value in values.items():
            object.__setattr__(self, name, value)
        scale, tau, alpha, start, end = (values[k] for k in ("scale", "tau", "alpha", "start", "end"))
        if not 1.0 <= scale <= MAX_SCALE:  # also rejects NaN and inf
            raise ValueError(f"scale={scale} is out of range: allowed is 1 <= scale <= {MAX_SCALE:g} (1 = off)")
        if not tau > 0.0:  # also rejects NaN; inf means "never clip"
            raise ValueError(f"tau={tau} is out of range: allowed is tau > 0")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} is out of range: allowed is 0 <= alpha <= 1")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"start={start} is out of range: allowed is 0 <= start < end <= 1")
        if not (start < end <= 1.0):
            raise ValueError(f"end={end} is out of range: allowed is start ({start}) < end <= 1")

    @property
    def active(self) -> bool:
        """False when NAG cannot change anything (scale 1 or alpha 0)."""
        return self.scale > 1.0 and self.alpha > 0.0

    @property
    def full_window(self) -> bool:
        return (self.start, self.end) == (0.0, 1.0)

    def with_overrides(self, **overrides: float | str | None) -> NAGConfig:
        """A copy with the given non-None fields replaced (and validated)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    """Recommended settings for one model, with where they come from."""

    config: NAGConfig
    steps: int | None
    guidance_scale: float | None
    source: str


def _preset(scale, tau, alpha, *, end=1.0, steps=None, guidance_scale=None, source) -> Preset:
    return Preset(NAGConfig(scale=scale, tau=tau, alpha=alpha, end=end), steps, guidance_scale, source)


TINY_FLUX = "second embedded model: picked for its worst kind by a `nag eval` sweep (docs/preset-sweep-tiny-flux.md)"
TINY = "embedded model: picked for its worst kind by a `nag eval` sweep (docs/results.md, how the preset was chosen)"
GENERIC = "generic default: no published recommendation for this family"

PRESETS: dict[str, Preset] = {
    "flux-schnell": _preset(
        5,
        2.5,
        0.25,
        steps=4,
        guidance_scale=0.0,
        source="authors' README Flux-schnell example (s 5, guidance 0, 4 steps); τ, α: their Flux processor defaults",
    ),
    "flux-dev": _preset(
        5,
        2.5,
        0.25,
        steps=25,
        guidance_scale=3.5,
        source="paper Table 1 (Flux-Dev, 25 steps, s 5); τ, α: the authors' Flux processor defaults",
    ),
    "flux-kontext": _preset(
        5,
        2.5,
        0.25,
        end=0.25,
        steps=25,
        guidance_scale=2.5,
        source="authors' Kontext pipeline defaults (nag_end 0.25 in their timestep units, which are ours)",
    ),
    "sd35-large-turbo": _preset(
        5,
        2.5,
        0.125,
        steps=8,
        guidance_scale=0.0,
        source="paper Table 1 (SD3.5-L-Turbo, 8 steps); α 0.125: the authors' SD3 pipeline default",
    ),
    "sdxl": _preset(
        3,
        2.5,
        0.5,
        steps=4,
        guidance_scale=0.0,
        source="authors' README DMD2 example (s 3, guidance 0, 4 steps); τ, α: their SDXL pipeline defaults",
    ),
    "sd15": _preset(5, 2.5, 0.38, source="NAG authors' per-model defaults table (project page)"),
    "wan21": _preset(
        9,
        2.5,
        0.25,
        steps=25,
        guidance_scale=5.0,
        source="authors' README Wan2.1-T2V-14B example (s 9, CFG 5, 25 steps); τ, α: their Wan defaults",
    ),
    "wan-4step": _preset(
        11, 3.5, 0.5, steps=4, guidance_scale=1.0, source="authors' 4-step Wan (CausVid) demo, app.py"
    ),
    "hunyuan-video": _preset(9, 2.5, 0.12, source="NAG authors' per-model defaults table (project page)"),
    "chroma": _preset(5, 2.5, 0.25, guidance_scale=4.0, source="NAG authors' per-model defaults table (project page)"),
    "ltx2": _preset(11, 2.5, 0.25, source="KJNodes LTX2_NAG node defaults (s 11, α 0.25, τ 2.5)"),
    "generic": _preset(5, 2.5, 0.25, source=GENERIC),
    "tiny": _preset(5, 1.25, 0.5, steps=4, guidance_scale=0.0, source=TINY),
    "tiny-flux": _preset(3, 1.25, 0.25, steps=4, guidance_scale=0.0, source=TINY_FLUX),
}
"""Named presets. Keys are what ``--preset`` / ``preset=`` accept."""

_PRESET_RULES: list[Callable[[Any], str | None]] = []


def register_preset_rule(rule: Callable[[Any], str | None]) -> None:
    """Let a model package pick the preset of pipelines it recognises (the embedded models do): ``rule(pipe)``
    returns a preset name or None. Rules are asked in order, before the family's own preset."""
    if rule not in _PRESET_RULES:
        _PRESET_RULES.append(rule)


def preset_rule(pipe: Any) -> str | None:
    """The preset the first matching rule names for ``pipe`` (None when no rule knows it)."""
    return next((name for rule in _PRESET_RULES if (name := rule(pipe)) is not None), None)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def presets_markdown() -> str:
    """The presets table as Markdown (the README's table is this text; a test keeps them equal)."""
    lines = ["| preset | steps | s | τ | α | source |", "|---|---|---|---|---|---|"]
    for name, preset in PRESETS.items():
        c = preset.config
        window = (
            "" if (c.start, c.end) == (0.0, 1.0) else f"; end {c.end:g}" if c.start == 0 else f"; {c.start:g}–{c.end:g}"
        )
        steps = "—" if preset.steps is None else str(preset.steps)
        lines.append(f"| `{name}` | {steps} | {c.scale:g} | {c.tau:g} | {c.alpha:g} | {preset.source}{window} |")
    return "\n".join(lines)
