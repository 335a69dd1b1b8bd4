"""Procedural clips for the video model ``tiny-wan``: one flat shape on a flat background, moving or still.

The frames reuse ``data.py``'s shapes and palette (smaller shapes, so that a moving one stays clear of the
border ring the checker reads as background). Every clip is a pure function of its seeded generator, like the
image data. Captions name the motion ("moving left", "standing still") besides shape, colour and background,
or leave some open; "a circle moving" asks for motion in some direction, not which. Some (shape, colour,
background, motion) combinations are never drawn in training: their full captions test generalisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

import numpy as np

from nag_guidance.tiny.data import COLOURS, IMAGE_SIZE, PALETTE, SHAPES, Sample, render

FRAMES = 9
"""Frames per clip (the pipeline's ``num_frames``; Wan needs ``num_frames - 1`` divisible by the VAE's
temporal factor, 2 here)."""
SPEED = 1
"""Pixels per frame a moving shape travels (8 pixels over a clip)."""
SIZE_RANGE = (5, 7)
"""Inclusive range of the shape's half-extent: the whole track stays 3 pixels clear of the edge."""
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
"""(dx, dy) per frame of each motion; image rows grow downwards, so "up" is -y."""
MOVING = "moving"
"""Spec value for "moving in some direction" (captions such as "a circle moving")."""

MOTION_PHRASES: dict[str, str] = {m: f"moving {m}" for m in MOTIONS[:4]} | {"still": "standing still"}

CAPTION_TEMPLATES: dict[str, str] = {
    "full": "a {colour} {shape} {motion} on a {background} background",
    "colour_shape_motion": "a {colour} {shape} {motion}",
    "shape_motion": "a {shape} {motion}",
    "shape_moving": "a {shape} {moving}",
    "colour_shape_background": "a {colour} {shape} on a {background} background",
    "shape_background_motion": "a {shape} {motion} on a {background} background",
    "colour_shape": "a {colour} {shape}",
    "colour_background": "a {colour} shape on a {background} background",
    "motion": "a shape {motion}",
    "shape": "a {shape}",
    "empty": "",
}
"""Caption forms; a form states only the attributes in its placeholders. ``{moving}`` is "moving" for a moving
clip (direction left open) and "standing still" for a still one."""

TRAIN_TEMPLATE_WEIGHTS: dict[str, float] = {
    "full": 0.30,
    "colour_shape_motion": 0.07,
    "shape_motion": 0.07,
    "shape_moving": 0.06,
    "colour_shape_background": 0.07,
    "shape_background_motion": 0.06,
    "colour_shape": 0.07,
    "colour_background": 0.06,
    "motion": 0.06,
    "shape": 0.06,
    "empty": 0.10,
}
"""How often each caption form is drawn in training; ``empty`` is the caption dropout that CFG needs."""

VOCABULARY: tuple[str, ...] = (
    "a",
    "on",
    "background",
    "shape",
    "moving",
    "standing",
    "still",
    *MOTIONS[:4],
    *SHAPES,
    *COLOURS,
)
"""Every word a caption can contain (the tokenizer is built from this list)."""


@dataclass(frozen=True)
class Clip:
    """Ground truth of one clip: what it shows, how it moves, and where the shape is at the middle frame."""

    shape: str
    colour: str
    background: str
    motion: str
    cx: int
    cy: int
    size: int

    def centre(self, frame: int) -> tuple[int, int]:
        dx, dy = DIRECTIONS[self.motion]
        offset = (frame - (FRAMES - 1) // 2) * SPEED
        return self.cx + dx * offset, self.cy + dy * offset


@dataclass(frozen=True)
class VideoSpec:
    """What a caption asks for; ``None`` leaves an attribute open, ``motion=MOVING`` any direction but still."""

    shape: str | None = None
    colour: str | None = None
    background: str | None = None
    motion: str | None = None


Quad = tuple[str, str, str, str]


def _all_quads() -> list[Quad]:
    return [(s, c, b, m) for s, c, b, m in product(SHAPES, COLOURS, COLOURS, MOTIONS) if c != b]


def _held_out_quads(count: int = 24, seed: int = 2505) -> frozenset[Quad]:
    quads = _all_quads()
    order = np.random.default_rng(seed).permutation(len(quads))
    return frozenset(quads[i] for i in order[:count])


HELD_OUT: frozenset[Quad] = _held_out_quads()
"""(shape, colour, background, motion) combinations never drawn in training."""
TRAIN_QUADS: tuple[Quad, ...] = tuple(q for q in _all_quads() if q not in HELD_OUT)


def render_clip(clip: Clip, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The (FRAMES, H, W, 3) uint8 frames of a clip."""
    frames = []
    for f in range(FRAMES):
        cx, cy = clip.centre(f)
        frames.append(render(Sample(clip.shape, clip.colour, clip.background, cx, cy, clip.size), image_size))
    return np.stack(frames)


def random_clip(rng: np.random.Generator, quads: tuple[Quad, ...] = TRAIN_QUADS) -> Clip:
    """A clip with attributes drawn uniformly from ``quads`` and a jittered position and size."""
    shape, colour, background, motion = quads[rng.integers(len(quads))]
    # Middle-frame centre: along the motion axis within 16 - 2 … 16 + 1, so the ±4-pixel track of a shape of
    # half-extent ≤ 7 stays inside pixels 3 … 28; across it (and for a still shape) the image data's ±3 jitter.
    along = int(IMAGE_SIZE // 2 + rng.integers(-2, 2))
    across = int(IMAGE_SIZE // 2 + rng.integers(-3, 4))
    other = int(IMAGE_SIZE // 2 + rng.integers(-3, 4))
    dx, _ = DIRECTIONS[motion]
    cx, cy = (along, across) if dx else (other, along) if motion != "still" else (other, across)
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    return Clip(shape, colour, background, motion, cx, cy, size)


def caption(clip: Clip | VideoSpec, template: str = "full") -> str:
    """The caption of a clip (or spec) in one of the ``CAPTION_TEMPLATES`` forms."""
    if template not in CAPTION_TEMPLATES:
        raise ValueError(f"template={template!r} is unknown; allowed: {', '.join(CAPTION_TEMPLATES)}")
    text = CAPTION_TEMPLATES[template]
    motion = clip.motion
    values = {
        "shape": clip.shape,
        "colour": clip.colour,
        "background": clip.background,
        "motion": MOTION_PHRASES.get(motion) if motion is not None else None,
        "moving": None if motion is None else (MOVING if motion != "still" else MOTION_PHRASES["still"]),
    }
    for key, value in values.items():
        if "{" + key + "}" in text and value is None:
            raise ValueError(f"template {template!r} needs {key}, which is None")
    return text.format(**values)


def spec_of(clip: Clip, template: str) -> VideoSpec:
    """The attributes that a caption form states about a clip (the others are open)."""
    text = CAPTION_TEMPLATES[template]
    motion = None
    if "{motion}" in text:
        motion = clip.motion
    elif "{moving}" in text:
        motion = MOVING if clip.motion != "still" else "still"
    return VideoSpec(
        shape=clip.shape if "{shape}" in text else None,
        colour=clip.colour if "{colour}" in text else None,
        background=clip.background if "{background}" in text else None,
        motion=motion,
    )


_BACKGROUND = re.compile(r"\b(\w+) background\b")
_MOTION = re.compile(r"\bmoving(?: (left|right|up|down))?\b|\b(still)\b")


def parse_caption(text: str) -> VideoSpec:
    """The attributes a caption asks for; inverse of ``caption`` for every template."""
    words = text.lower().replace(",", " ").split()
    joined = " ".join(words)
    match = _BACKGROUND.search(joined)
    background = match.group(1) if match and match.group(1) in PALETTE else None
    colour = None
    for i, word in enumerate(words):
        if word in PALETTE and not (i + 1 < len(words) and words[i + 1] == "background"):
            colour = word
    shape = next((w for w in words if w in SHAPES), None)
    motion = None
    found = _MOTION.search(joined)
    if found:
        motion = found.group(1) or ("still" if found.group(2) else MOVING)
    return VideoSpec(shape=shape, colour=colour, background=background, motion=motion)


def training_clips(seed: int, step: int, batch_size: int) -> tuple[np.ndarray, list[Clip], list[str]]:
    """Batch number ``step`` of the stream ``seed``: (N, FRAMES, H, W, 3) frames, ground truth and captions."""
    rng = np.random.default_rng([seed, step])
    clips = [random_clip(rng) for _ in range(batch_size)]
    return np.stack([render_clip(c) for c in clips]), clips, training_captions(rng, clips)


def training_captions(rng: np.random.Generator, clips: list[Clip]) -> list[str]:
    """A caption per clip, its form drawn with ``TRAIN_TEMPLATE_WEIGHTS``."""
    names = list(TRAIN_TEMPLATE_WEIGHTS)
    weights = np.array([TRAIN_TEMPLATE_WEIGHTS[n] for n in names])
    forms = rng.choice(len(names), size=len(clips), p=weights / weights.sum())
    return [caption(c, names[t]) for c, t in zip(clips, forms, strict=True)]


def held_out_captions() -> list[tuple[str, VideoSpec]]:
    """Full captions of the held-out combinations, with what each asks for (sorted, deterministic)."""
    return [(caption(VideoSpec(s, c, b, m)), VideoSpec(s, c, b, m)) for s, c, b, m in sorted(HELD_OUT)]
