"""`nag eval` on the embedded model: every (condition, attribute kind) is one work item of the resumable,
distributable batch runner; each writes its metrics to the manifest and a strip of sample images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nag_guidance import batch
from nag_guidance.eval import metrics, stats
from nag_guidance.eval.suite import (
    ALL_KINDS,
    ATTRIBUTE,
    KINDS,
    REPORTING_SEED_START,
    Condition,
    Pair,
    check_kinds,
    compared,
    conditions,
    flux_conditions,
    pairs,
    seed_list,
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
            elif condition.tau_mode == "relative" or condition.operator != "paper":
                from nag_guidance.eval.options import swapped_operator

                with swapped_operator("relative" if condition.tau_mode == "relative" else condition.operator):
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

    def measure(
        self, condition: Condition, kind: str, suite: list[Pair], seeds: Sequence[int]
    ) -> tuple[dict, np.ndarray]:
        """Metrics of one condition on one kind's pairs, one sample per (pair, seed), and the images (one per
        row). Each distinct image is generated and counted once: an unguided image depends on its prompt and
        seed only, so it is made once and read against every negative of its prompt. Errors and 95 % intervals
        are two-way cluster-robust over prompts and seeds (``eval.stats``); ``cells`` keeps every row's readings
        (pair-major, seed-minor) for the paired statistics of ``with_suppression`` and the per-pair tables."""
        from nag_guidance.tiny.checker import check
        from nag_guidance.tiny.features import extract_features, frechet_distance

        seeds = list(seeds)
        rows = [(p, s) for p in suite for s in seeds]
        distinct = condition.method == "none"  # the only condition that ignores the negative
        keys = [(p.prompt, s) if distinct else (p.prompt, p.negative, s) for p, s in rows]
        first_row: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            first_row.setdefault(key, i)
        made = [rows[i] for i in first_row.values()]  # one row per distinct image, in order of appearance
        first = {key: j for j, key in enumerate(first_row)}
        images = self.images(condition, [p.prompt for p, _ in made], [p.negative for p, _ in made],
                             [s for _, s in made])  # fmt: skip
        index = np.array([first[k] for k in keys])
        reading = check(images)
        names = {"shape": reading.shape_names(), "background": reading.background_names()}
        # an off-palette colour is no colour of the palette: keep it apart
        colours = zip(reading.colour_names(), reading.on_palette, strict=True)
        names["colour"] = [name if ok else "off-palette" for name, ok in colours]
        slots = np.array(
            [pair.shown_in(lambda a, j=j: names[a][j]) for (pair, _), j in zip(rows, index, strict=True)], dtype=bool
        ).reshape(len(rows), 2)
        hit = slots.any(axis=1)
        right = reading.matches([p.target for p, _ in made])
        adherent = (right["shape_and_colour"] & right["background"])[index]
        clean = reading.clean[index]
        prompt_of, seed_of = [p.prompt for p, _ in rows], [s for _, s in rows]
        unique = np.unique(index, return_index=True)[1]  # one row per distinct image
        fd = frechet_distance(extract_features(self.net, images), self.real_features(kind, suite, len(seeds)))
        read = [names[ATTRIBUTE[kind]][j] for j in range(len(images))]
        result = {
            "kind": kind,
            "samples": len(images),
            "rows": len(rows),
            "seeds": [seeds[0], len(seeds)],
            **stats.clustered_rate(hit, prompt_of, seed_of).as_dict("negative_rate"),
            "negative_rate_shape": float(slots[:, 0].mean()),
            "negative_rate_background": float(slots[:, 1].mean()),
            **stats.clustered_rate(adherent[unique], np.array(prompt_of)[unique], np.array(seed_of)[unique]).as_dict(
                "adherence"
            ),
            "on_palette": float(reading.on_palette.mean()),
            "entropy_bits": metrics.entropy_bits([str(r) for r in read]),
            "clean": float(reading.clean.mean()),
            "confidence": float(reading.confidence.mean()),
            "frechet": fd,
            "cells": {
                "negative": _bits(hit),
                "named": _bits(slots[:, 0]),
                "adherent": _bits(adherent),
                "clean": _bits(clean),
            },
        }
        return result, images[index]


def _bits(values: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in np.asarray(values, dtype=bool))


def unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) == ord("1")


def items(
    quick: bool,
    kinds: tuple[str, ...],
    seeds: int,
    model: str = "tiny",
    seed_start: int = REPORTING_SEED_START,
    compare: bool = False,
    steps: int | None = None,
) -> list[batch.Item]:
    """One item per (condition, kind): sweeps on the core kinds only, the method comparison on every kind; the
    25-step teacher only on the first kind (it costs ~6x per item). ``compare``: the method comparison only (no
    parameter sweeps, no teacher); ``steps``: that student step count only."""
    seed_list(seeds, seed_start)  # refuses a range that straddles the tuning and reporting ranges
    suite = flux_conditions(quick) if model == "tiny-flux" else conditions(quick)
    if compare:
        suite = [c for c in suite if compared(c) and c.unet == "student"]
    if steps is not None:
        suite = [c for c in suite if c.steps == steps]
        if not suite:
            raise ValueError(f"the embedded model's suite has no {steps}-step conditions (1, 2 or 4)")
    chosen = [
        (c, k) for c in suite for k in kinds if (c.unet == "student" or k == kinds[0]) and (k in KINDS or compared(c))
    ]
    return [
        batch.Item(
            i, {"condition": c.as_dict(), "kind": kind, "seeds": seeds, "seed_start": seed_start, "quick": quick}
        )
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
    seed_start: int = REPORTING_SEED_START,
    compare: bool = False,
    steps: int | None = None,
) -> list[dict]:
    """Run (or resume) the evaluation of embedded ``model`` into ``out``; returns every item's record, ordered."""
    check_kinds(kinds)
    evaluator = Evaluator(device=device)
    (out / "samples").mkdir(parents=True, exist_ok=True)

    def work(item: batch.Item) -> dict:
        condition_fields = {k: v for k, v in item.payload["condition"].items() if k != "label"}
        condition = Condition(**condition_fields)
        suite = pairs((item.payload["kind"],), quick=item.payload["quick"])
        chosen = seed_list(item.payload["seeds"], item.payload.get("seed_start", 0))
        result, images = evaluator.measure(condition, item.payload["kind"], suite, chosen)
        strip = np.concatenate(list(images[:SAMPLE_SEEDS]), axis=1)
        sample = out / "samples" / f"{item.key}.png"  # by key: indices shift when the suite changes
        save_png(Image.fromarray(strip), sample)
        return {"condition": item.payload["condition"], "result": result, "sample": sample.name,
                "pair": {"prompt": suite[0].prompt, "negative": suite[0].negative},
                "quick": item.payload["quick"]}  # fmt: skip

    todo = items(quick, kinds, seeds, model, seed_start, compare, steps)
    batch.run_items(todo, out, work, progress=progress, device=device)
    return batch.read_manifest(out, {item.key for item in todo})


def with_suppression(records: list[dict]) -> list[dict]:
    """Add each record's suppression relative to the "none" condition of the same model, steps, kind and seeds,
    and the change of adherence and clean rate against it, each with its paired cluster-robust error and 95 %
    interval (the same prompts and seeds drawn for both conditions)."""

    def key(r: dict) -> tuple:
        c = r["condition"]
        return c.get("model", "tiny"), c["unet"], c["steps"], r["result"]["kind"], tuple(r["result"].get("seeds", ()))

    baseline = {key(r): r for r in records if r["condition"]["method"] == "none"}
    out = []
    for r in records:
        base = baseline.get(key(r))
        extra: dict = {"suppression": None, "baseline_rate": None}
        if base is not None:
            extra["baseline_rate"] = base["result"]["negative_rate"]
            extra["suppression"] = metrics.suppression(r["result"]["negative_rate"], extra["baseline_rate"])
            extra.update(_paired(r, base))
        out.append({**r, "result": {**r["result"], **extra}})
    return out


def _paired(record: dict, base: dict) -> dict:
    """Cluster-robust suppression, adherence change and clean-rate change of ``record`` against ``base``."""
    cells, base_cells = record["result"].get("cells"), base["result"].get("cells")
    if not cells or not base_cells or len(cells["negative"]) != len(base_cells["negative"]):
        return {}
    kind, quick = record["result"]["kind"], record.get("quick", False)
    start, count = record["result"]["seeds"]
    suite = pairs((kind,), quick=quick)
    prompts = [p.prompt for p in suite for _ in range(count)]
    seeds = [s for _ in suite for s in range(start, start + count)]
    if len(prompts) != len(cells["negative"]):
        return {}
    columns = {name: unbits(cells[name]) for name in ("negative", "adherent", "clean")}
    columns |= {f"base_{name}": unbits(base_cells[name]) for name in ("negative", "adherent", "clean")}
    out: dict = {}
    if columns["base_negative"].any():
        suppression = stats.clustered_statistic(
            columns, prompts, seeds, lambda m: 1.0 - m["negative"] / m["base_negative"]
        )
        out |= {k: v for k, v in suppression.as_dict("suppression").items() if k != "suppression"}
    for name in ("adherent", "clean"):
        change = stats.clustered_statistic(columns, prompts, seeds, lambda m, n=name: m[n] - m[f"base_{n}"])
        label = "adherence_change" if name == "adherent" else "clean_change"
        out |= change.as_dict(label)
    return out
