"""`nag eval` on the embedded model: every (condition, attribute kind) is one work item of the resumable,
distributable batch runner; each writes its metrics to the manifest and a strip of sample images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nag_guidance import batch
from nag_guidance.eval import metrics
from nag_guidance.eval.suite import (
    ALL_KINDS,
    ATTRIBUTE,
    KINDS,
    Condition,
    Pair,
    check_kinds,
    compared,
    conditions,
    flux_conditions,
    pairs,
)
from nag_guidance.files import save_png
from nag_guidance.tiny import data

SAMPLE_SEEDS = 8  # images kept per item (first pair) for the grids


def real_images_without(suite: Sequence[Pair], seeds: int, seed: int = 0) -> np.ndarray:
    """``seeds`` real procedural images per pair that satisfy its prompt and do not show its negative: what a user
    asking for the prompt without the negative wants."""
    rng = np.random.default_rng(seed)
    samples = []
    for pair in suite:
        for _ in range(seeds):
            while True:
                sample = data.sample_for_spec(rng, pair.target)
                if not pair.shows_negative(sample):
                    samples.append(sample)
                    break
    return data.render_batch(samples)


class Evaluator:
    """Loads the embedded model (student and, when needed, teacher) once per process and runs conditions."""

    def __init__(self, device: str = "cpu", batch_size: int = 128) -> None:
        from nag_guidance import tiny

        self.device, self.batch_size = device, batch_size
        self.pipes: dict[str, Any] = {}
        self.net = tiny.load_feature_net()
        self._real: dict[tuple, np.ndarray] = {}

    def pipe(self, model: str, unet: str):
        key = f"{model}/{unet}"
        if key not in self.pipes:
            import nag_guidance as nag
            from nag_guidance import tiny

            self.pipes[key] = nag.apply(tiny.load_pipeline(device=self.device, unet=unet, model=model))
        return self.pipes[key]

    def images(self, condition: Condition, prompts: list[str], negatives: list[str], seeds: list[int]) -> np.ndarray:
        import torch

        from nag_guidance.tiny.loading import FLUX_MAX_SEQUENCE_LENGTH

        pipe = self.pipe(condition.model, condition.unet)
        flux = condition.model == "tiny-flux"
        parts = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            kwargs: dict[str, Any] = {
                "num_inference_steps": condition.steps,
                "generator": [torch.Generator().manual_seed(s) for s in seeds[chunk]],
                "output_type": "np",
            }
            if flux:  # 32 px, the trained T5 length; its CFG is true CFG
                size = data.IMAGE_SIZE
                kwargs.update(height=size, width=size, max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH)
                kwargs["true_cfg_scale"] = condition.cfg_scale or 1.0
            else:
                kwargs["guidance_scale"] = condition.cfg_scale or 0.0
            if condition.method in ("cfg", "nag+cfg"):
                kwargs["negative_prompt"] = negatives[chunk]
            if condition.method in ("nag", "nag+cfg"):
                kwargs.update(
                    nag_negative_prompt=negatives[chunk],
                    nag_scale=condition.scale,
                    nag_tau=condition.tau,
                    nag_alpha=condition.alpha,
                    nag_start=0.0,
                    nag_end=condition.end,
                    nag_pooled=condition.pooled,
                )
            if condition.method == "vsf":
                out = self._vsf_images(condition, prompts[chunk], negatives[chunk], kwargs)
            elif condition.tau_mode == "relative":
                from nag_guidance.eval.options import relative_tau

                with relative_tau():
                    out = pipe(prompts[chunk], **kwargs).images
            else:
                out = pipe(prompts[chunk], **kwargs).images
            parts.append(np.round(np.asarray(out) * 255).clip(0, 255).astype(np.uint8))
        return np.concatenate(parts)

    def _vsf_images(self, condition: Condition, prompts: list[str], negatives: list[str], kwargs: dict) -> Any:
        """VSF in place of the text-attention processors (NAG's, inert in a call without a NAG negative), which
        it puts back after the call."""
        from nag_guidance.eval.vsf import apply_vsf, joint_vsf, negative_token_mask

        pipe = self.pipe(condition.model, condition.unet)
        if condition.model == "tiny-flux":  # joint attention: NAG's negative text stream, VSF's combine
            with joint_vsf(condition.scale):
                carrier = {"nag_negative_prompt": negatives, "nag_scale": 2.0, "nag_end": 1.0, "nag_pooled": "prompt"}
                return pipe(prompts, **{**kwargs, **carrier}).images
        embeds = pipe.encode_prompt(negatives, pipe.device, 1, False)[0]
        with apply_vsf(pipe, embeds, condition.scale, negative_token_mask(pipe, negatives)):
            return pipe(prompts, **kwargs).images

    def real_features(self, kind: str, suite: list[Pair], seeds: int) -> np.ndarray:
        from nag_guidance.tiny.features import extract_features

        key = (kind, len(suite), seeds)
        if key not in self._real:
            self._real[key] = extract_features(self.net, real_images_without(suite, seeds))
        return self._real[key]

    def measure(self, condition: Condition, kind: str, suite: list[Pair], seeds: int) -> tuple[dict, np.ndarray]:
        """Metrics of one condition on one kind's pairs (``seeds`` samples per pair), and the images."""
        from nag_guidance.tiny.checker import check
        from nag_guidance.tiny.features import extract_features, frechet_distance

        prompts = [p.prompt for p in suite for _ in range(seeds)]
        negatives = [p.negative for p in suite for _ in range(seeds)]
        images = self.images(condition, prompts, negatives, [s for _ in suite for s in range(seeds)])
        reading = check(images)
        names = {"shape": reading.shape_names(), "background": reading.background_names()}
        # an off-palette colour is no colour of the palette: keep it apart
        colours = zip(reading.colour_names(), reading.on_palette, strict=True)
        names["colour"] = [name if ok else "off-palette" for name, ok in colours]
        read = names[ATTRIBUTE[kind]]
        rows = [p for p in suite for _ in range(seeds)]
        hit = np.array(
            [all(names[a][i] in values for a, values in pair.avoid) for i, pair in enumerate(rows)], dtype=bool
        )
        right = reading.matches([p.target for p in suite for _ in range(seeds)])
        adherent = right["shape_and_colour"] & right["background"]
        negative_rate, negative_se = metrics.rate(hit)
        adherence, adherence_se = metrics.rate(adherent)
        fd = frechet_distance(extract_features(self.net, images), self.real_features(kind, suite, seeds))
        result = {
            "kind": kind,
            "samples": len(images),
            "negative_rate": negative_rate,
            "negative_rate_se": negative_se,
            "adherence": adherence,
            "adherence_se": adherence_se,
            "on_palette": float(reading.on_palette.mean()),
            "entropy_bits": metrics.entropy_bits([str(r) for r in read]),
            "clean": float(reading.clean.mean()),
            "confidence": float(reading.confidence.mean()),
            "frechet": fd,
        }
        return result, images


def items(quick: bool, kinds: tuple[str, ...], seeds: int, model: str = "tiny") -> list[batch.Item]:
    """One item per (condition, kind): sweeps on the core kinds only, the method comparison on every kind; the
    25-step teacher only on the first kind (it costs ~6x per item)."""
    suite = flux_conditions(quick) if model == "tiny-flux" else conditions(quick)
    chosen = [
        (c, k) for c in suite for k in kinds if (c.unet == "student" or k == kinds[0]) and (k in KINDS or compared(c))
    ]
    return [
        batch.Item(i, {"condition": c.as_dict(), "kind": kind, "seeds": seeds, "quick": quick})
        for i, (c, kind) in enumerate(chosen)
    ]


def run(
    out: Path,
    quick: bool = False,
    kinds: tuple[str, ...] = ALL_KINDS,
    seeds: int = 32,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    model: str = "tiny",
) -> list[dict]:
    """Run (or resume) the evaluation of embedded ``model`` into ``out``; returns every item's record, ordered."""
    check_kinds(kinds)
    evaluator = Evaluator(device=device)
    (out / "samples").mkdir(parents=True, exist_ok=True)

    def work(item: batch.Item) -> dict:
        condition_fields = {k: v for k, v in item.payload["condition"].items() if k != "label"}
        condition = Condition(**condition_fields)
        suite = pairs((item.payload["kind"],), quick=item.payload["quick"])
        result, images = evaluator.measure(condition, item.payload["kind"], suite, item.payload["seeds"])
        strip = np.concatenate(list(images[:SAMPLE_SEEDS]), axis=1)
        sample = out / "samples" / f"{item.key}.png"  # by key: indices shift when the suite changes
        save_png(Image.fromarray(strip), sample)
        return {"condition": item.payload["condition"], "result": result, "sample": sample.name,
                "pair": {"prompt": suite[0].prompt, "negative": suite[0].negative}}  # fmt: skip

    todo = items(quick, kinds, seeds, model)
    batch.run_items(todo, out, work, progress=progress, device=device)
    return batch.read_manifest(out, {item.key for item in todo})


def with_suppression(records: list[dict]) -> list[dict]:
    """Add each record's suppression relative to the "none" condition of the same model, steps and kind."""

    def key(r: dict) -> tuple:
        c = r["condition"]
        return c.get("model", "tiny"), c["unet"], c["steps"], r["result"]["kind"]

    baseline = {key(r): r["result"]["negative_rate"] for r in records if r["condition"]["method"] == "none"}
    out = []
    for r in records:
        base = baseline.get(key(r))
        value = None if base is None else metrics.suppression(r["result"]["negative_rate"], base)
        out.append({**r, "result": {**r["result"], "suppression": value, "baseline_rate": base}})
    return out
