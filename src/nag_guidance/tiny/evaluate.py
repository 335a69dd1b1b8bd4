"""Measurements of the embedded model with the analytic checker, and the sample-grid figure.

``python -m nag_guidance.tiny.evaluate [--grid docs/images/tiny-samples.png]`` prints the report of the shipped
weights: adherence on held-out captions (full captions of triples never trained) for the student at 1/2/4
steps and the teacher, the colour spread of the under-specified prompt "a circle", and Fréchet feature
distances to real procedural images.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw

from nag_guidance.tiny import data
from nag_guidance.tiny.checker import check
from nag_guidance.tiny.features import extract_features, frechet_distance
from nag_guidance.tiny.loading import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    TEACHER_STEPS,
    load_feature_net,
    load_pipeline,
)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch: int = 64,
    **kwargs: object,
) -> np.ndarray:
    """(N, H, W, 3) uint8 images, image i from ``prompts[i]`` and a generator seeded with ``seeds[i]``."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    parts = []
    for start in range(0, len(prompts), batch):
        chunk = slice(start, start + batch)
        output = pipe(
            list(prompts[chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds[chunk]],
            output_type="np",
            **kwargs,
        )
        parts.append(np.round(np.asarray(output.images) * 255).clip(0, 255).astype(np.uint8))
    return np.concatenate(parts)


def adherence(
    pipe: StableDiffusionPipeline,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seeds_per_caption: int = 32,
) -> tuple[dict[str, float], np.ndarray]:
    """Fractions of held-out-caption samples whose attributes the checker reads as asked, and the images."""
    captions = data.held_out_captions()
    prompts = [text for text, _ in captions for _ in range(seeds_per_caption)]
    specs = [spec for _, spec in captions for _ in range(seeds_per_caption)]
    seeds = [i for _ in captions for i in range(seeds_per_caption)]
    images = generate(pipe, prompts, seeds, steps, guidance)
    result = check(images)
    right = result.matches(specs)
    summary = {key: float(value.mean()) for key, value in right.items()}
    summary["all"] = float((right["shape_and_colour"] & right["background"]).mean())
    summary["on_palette"] = float(result.on_palette.mean())
    summary["clean"] = float(result.clean.mean())
    summary["samples"] = len(images)
    return summary, images


def colour_spread(
    pipe: StableDiffusionPipeline, prompt: str = "a circle", samples: int = 256, steps: int = DEFAULT_STEPS
) -> dict[str, object]:
    """Shape-colour histogram of an under-specified prompt and its entropy in bits (log2 8 = 3 is uniform
    over the palette; off-palette samples are counted apart and left out of the entropy)."""
    images = generate(pipe, [prompt] * samples, list(range(samples)), steps)
    result = check(images)
    names = result.colour_names()
    on_palette = [n for n, ok in zip(names, result.on_palette, strict=True) if ok]
    counts = {c: on_palette.count(c) for c in data.COLOURS}
    total = sum(counts.values())
    probabilities = [v / total for v in counts.values() if v] if total else []
    entropy = -sum(p * math.log2(p) for p in probabilities)
    spec = data.parse_caption(prompt)
    return {
        "prompt": prompt,
        "counts": counts,
        "off_palette": int(samples - total),
        "entropy_bits": entropy,
        "shape_right": float(result.matches(spec)["shape"].mean()),
        "clean": float(result.clean.mean()),
    }


def real_images(specs: Sequence[data.Spec], seed: int = 0) -> np.ndarray:
    """Procedural images satisfying each spec (open attributes uniform): the reference distribution."""
    rng = np.random.default_rng(seed)
    return data.render_batch([data.sample_for_spec(rng, spec) for spec in specs])


def full_report(path: Path | None = None, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Every measurement of the model under ``path`` (default: the shipped weights)."""
    student = load_pipeline(path=path)
    teacher = load_pipeline(path=path, unet="teacher", verify=False)
    net = load_feature_net(path, verify=False)
    specs = [spec for _, spec in data.held_out_captions() for _ in range(32)]
    real = extract_features(net, real_images(specs))
    report: dict[str, object] = {}
    runs = [("student", student, s, 0.0) for s in (1, 2, 4)]
    runs += [("teacher", teacher, 4, 0.0), ("teacher", teacher, TEACHER_STEPS, 0.0)]
    runs += [("teacher", teacher, TEACHER_STEPS, 3.0)]
    for name, pipe, steps, guidance in runs:
        summary, images = adherence(pipe, steps, guidance)
        summary["frechet"] = frechet_distance(extract_features(net, images), real)
        key = f"{name}_{steps}_steps" + (f"_cfg{guidance:g}" if guidance > 1 else "")
        report[key] = summary
        progress(f"{key}: {json.dumps(summary)}")
    for prompt in ("a circle", "a square", "a triangle"):
        report[f"spread {prompt}"] = colour_spread(student, prompt)
        progress(f"spread {prompt}: {json.dumps(report[f'spread {prompt}'])}")
    return report


def render_sample_grid(
    pipe: StableDiffusionPipeline,
    path: Path,
    steps: int = DEFAULT_STEPS,
    seeds: Sequence[int] = tuple(range(8)),
    scale: int = 3,
) -> None:
    """PNG grid: one row per held-out caption (label on the left), one column per seed, nearest upscaling."""
    captions = [text for text, _ in data.held_out_captions()]
    images = generate(pipe, [c for c in captions for _ in seeds], [s for _ in captions for s in seeds], steps)
    tile, gap, label = data.IMAGE_SIZE * scale, 2, 260
    canvas = Image.new("RGB", (label + len(seeds) * (tile + gap), len(captions) * (tile + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(captions):
        draw.text((4, row * (tile + gap) + tile // 2 - 6), text, fill=(0, 0, 0))
        for col in range(len(seeds)):
            picture = Image.fromarray(images[row * len(seeds) + col]).resize((tile, tile), Image.NEAREST)
            canvas.paste(picture, (label + col * (tile + gap), row * (tile + gap)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the embedded model with the analytic checker.")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped one)")
    parser.add_argument("--grid", type=Path, default=None, help="also render the sample grid PNG here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = full_report(args.weights)
    print(json.dumps(report, indent=2))
    if args.grid is not None:
        render_sample_grid(load_pipeline(path=args.weights), args.grid)


if __name__ == "__main__":
    main()
