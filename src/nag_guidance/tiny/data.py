"""Procedural data for the embedded model: one flat-coloured shape on a flat background, with captions.

Everything here is a pure function of its arguments (seeded ``numpy.random.Generator`` in, arrays out), so the
training stream, the evaluation suites and the checker tests all see the same, reproducible images. Captions
either name every attribute or leave some open; an attribute a caption leaves open varies uniformly, which is the
variation a negative prompt is meant to remove.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

import numpy as np

IMAGE_SIZE = 32

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (245, 225, 40),
    "green": (30, 170, 60),
    "blue": (30, 70, 230),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
"""The colour names and their RGB values; shape and background colours are drawn from it."""

COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)

CENTRE_JITTER = 3
"""Largest offset (pixels) of the shape centre from the image centre."""
SIZE_RANGE = (7, 10)
"""Inclusive range of the shape's half-extent in pixels."""

CAPTION_TEMPLATES: dict[str, str] = {
    "full": "a {colour} {shape} on a {background} background",
    "colour_shape": "a {colour} {shape}",
    "shape_background": "a {shape} on a {background} background",
    "colour_background": "a {colour} shape on a {background} background",
    "shape": "a {shape}",
    "colour_shape_word": "a {colour} shape",
    "colour": "{colour}",
    "shape_word": "{shape}",
    "background": "{background} background",
    "empty": "",
}
"""Caption forms; a form mentions only the attributes in its placeholders."""

TRAIN_TEMPLATE_WEIGHTS: dict[str, float] = {
    "full": 0.30,
    "colour_shape": 0.10,
    "shape_background": 0.08,
    "colour_background": 0.08,
    "shape": 0.08,
    "colour_shape_word": 0.07,
    "colour": 0.07,
    "shape_word": 0.06,
    "background": 0.06,
    "empty": 0.10,
}
"""How often each caption form is drawn in training; ``empty`` is the caption dropout that CFG needs."""

VOCABULARY: tuple[str, ...] = ("a", "on", "background", "shape", *SHAPES, *COLOURS)
"""Every word a caption can contain (the tokenizer is built from this list)."""


@dataclass(frozen=True)
class Sample:
    """Ground truth of one image: what it shows and where."""

    shape: str
    colour: str
    background: str
    cx: int
    cy: int
    size: int


@dataclass(frozen=True)
class Spec:
    """What a caption asks for; ``None`` leaves the attribute open."""

    shape: str | None = None
    colour: str | None = None
    background: str | None = None

    def matches(self, sample: Sample) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.shape, sample.shape),
                (self.colour, sample.colour),
                (self.background, sample.background),
            )
        )


def _all_triples() -> list[tuple[str, str, str]]:
    return [(s, c, b) for s, c, b in product(SHAPES, COLOURS, COLOURS) if c != b]


def _held_out_triples(count: int = 16, seed: int = 1234) -> frozenset[tuple[str, str, str]]:
    triples = _all_triples()
    order = np.random.default_rng(seed).permutation(len(triples))
    return frozenset(triples[i] for i in order[:count])


ALL_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(_all_triples())
"""Every (shape, colour, background) triple with colour ≠ background."""
HELD_OUT: frozenset[tuple[str, str, str]] = _held_out_triples()
"""(shape, colour, background) triples never drawn in training; their full captions test generalisation."""
TRAIN_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(t for t in _all_triples() if t not in HELD_OUT)


def _triangle_mask(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray:
    # Upward isosceles triangle inside the box [cx ± size] × [cy ± size]: apex at the top centre.
    top, bottom = cy - size, cy + size
    half_width = size * (yy - top) / (bottom - top)
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)


def shape_mask(shape: str, cx: float, cy: float, size: float, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (H, W) mask of a shape; pixel centres are sampled, so edges are hard (no anti-aliasing)."""
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= size**2
    if shape == "square":
        half = size * 0.9  # a little smaller so the square's area is closer to the circle's
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    if shape == "triangle":
        return _triangle_mask(xx, yy, cx, cy, size)
    raise ValueError(f"shape={shape!r} is unknown; allowed: {', '.join(SHAPES)}")


def render(sample: Sample, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The (H, W, 3) uint8 image of a sample."""
    for name in (sample.colour, sample.background):
        if name not in PALETTE:
            raise ValueError(f"colour {name!r} is not in the palette; allowed: {', '.join(COLOURS)}")
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = PALETTE[sample.background]
    image[shape_mask(sample.shape, sample.cx, sample.cy, sample.size, image_size)] = PALETTE[sample.colour]
    return image


def render_batch(samples: list[Sample], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """(N, H, W, 3) uint8 images of several samples."""
    return (
        np.stack([render(s, image_size) for s in samples])
        if samples
        else np.zeros((0, image_size, image_size, 3), np.uint8)
    )


def random_sample(rng: np.random.Generator, triples: tuple[tuple[str, str, str], ...] = TRAIN_TRIPLES) -> Sample:
    """A sample with attributes drawn uniformly from ``triples`` and a jittered position and size."""
    shape, colour, background = triples[rng.integers(len(triples))]
    cx, cy = (IMAGE_SIZE // 2 + rng.integers(-CENTRE_JITTER, CENTRE_JITTER + 1, size=2)).tolist()
    size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
    return Sample(shape, colour, background, cx, cy, size)


def caption(sample: Sample | Spec, template: str = "full") -> str:
    """The caption of a sample (or spec) in one of the ``CAPTION_TEMPLATES`` forms."""
    if template not in CAPTION_TEMPLATES:
        raise ValueError(f"template={template!r} is unknown; allowed: {', '.join(CAPTION_TEMPLATES)}")
    text = CAPTION_TEMPLATES[template]
    values = {"shape": sample.shape, "colour": sample.colour, "background": sample.background}
    for key, value in values.items():
        if "{" + key + "}" in text and value is None:
            raise ValueError(f"template {template!r} needs {key}, which is None")
    return text.format(**values)


def spec_of(sample: Sample, template: str) -> Spec:
    """The attributes that a caption form states about a sample (the others are open)."""
    text = CAPTION_TEMPLATES[template]
    return Spec(
        shape=sample.shape if "{shape}" in text else None,
        colour=sample.colour if "{colour}" in text else None,
        background=sample.background if "{background}" in text else None,
    )


_BACKGROUND = re.compile(r"\b(\w+) background\b")


def parse_caption(text: str) -> Spec:
    """The attributes a caption asks for. Inverse of ``caption`` for every template; a colour word followed by
    "background" is the background, any other colour word is the shape colour."""
    words = text.lower().replace(",", " ").split()
    background = None
    match = _BACKGROUND.search(" ".join(words))
    if match and match.group(1) in PALETTE:
        background = match.group(1)
    shape_colour = None
    for i, word in enumerate(words):
        if word in PALETTE and not (i + 1 < len(words) and words[i + 1] == "background"):
            shape_colour = word
    shape = next((w for w in words if w in SHAPES), None)
    return Spec(shape=shape, colour=shape_colour, background=background)


def training_batch(seed: int, step: int, batch_size: int) -> tuple[np.ndarray, list[Sample], list[str]]:
    """The training batch number ``step`` of the stream ``seed``: images, ground truth and captions.

    Each batch depends only on (seed, step), so a resumed run sees exactly the data of an uninterrupted one.
    """
    rng = np.random.default_rng([seed, step])
    names = list(TRAIN_TEMPLATE_WEIGHTS)
    weights = np.array([TRAIN_TEMPLATE_WEIGHTS[n] for n in names])
    samples = [random_sample(rng) for _ in range(batch_size)]
    templates = rng.choice(len(names), size=batch_size, p=weights / weights.sum())
    captions = [caption(s, names[t]) for s, t in zip(samples, templates, strict=True)]
    return render_batch(samples), samples, captions


def sample_for_spec(rng: np.random.Generator, spec: Spec, include_held_out: bool = True) -> Sample:
    """A random sample satisfying ``spec`` (open attributes uniform), e.g. real images for a prompt."""
    triples = tuple(
        t
        for t in (_all_triples() if include_held_out else TRAIN_TRIPLES)
        if spec.matches(Sample(t[0], t[1], t[2], 0, 0, 0))
    )
    if not triples:
        raise ValueError(f"no image satisfies {spec}")
    return random_sample(rng, triples)


def held_out_captions() -> list[tuple[str, Spec]]:
    """Full captions of the held-out triples, with what each asks for (sorted, deterministic)."""
    return [(caption(Spec(s, c, b)), Spec(s, c, b)) for s, c, b in sorted(HELD_OUT)]
