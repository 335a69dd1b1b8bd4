"""`nag eval --model ID --clip-model PATH`: NAG vs CFG vs nothing on a user's model, scored by local CLIP
weights (there is no analytic checker for arbitrary images). Pairs come from a file of ``prompt<TAB>negative``
lines; each pair is generated with ``seeds`` seeds per method, through the same resumable batch runner."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from nag_guidance import batch, generation
from nag_guidance.eval.clip import ClipScorer


def read_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise ValueError(f"pairs file {path} does not exist")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"{path}:{number}: expected 'prompt<TAB>negative'")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise ValueError(f"pairs file {path} has no pairs")
    return pairs


def run(
    model: str, clip_model: Path, pairs_file: Path, out: Path, seeds: int = 4, device: str = "cpu", **settings: Any
) -> dict[str, dict[str, float]]:
    """Mean CLIP prompt and negative scores per method; writes user-results.json into ``out``."""
    pairs = read_pairs(pairs_file)
    scorer = ClipScorer(clip_model, device)  # fails before the (possibly large) model is loaded
    loaded = generation.load(model, device=device)
    items = [
        batch.Item(i, {"prompt": p, "negative": n, "method": m, "seeds": seeds, **settings})
        for i, (p, n, m) in enumerate((p, n, m) for p, n in pairs for m in generation.METHODS)
    ]

    def work(item: batch.Item) -> dict[str, Any]:
        payload = item.payload
        request = generation.Request(
            prompt=payload["prompt"], negative=payload["negative"], num_images=seeds, **settings
        )
        result = generation.run(loaded, request, payload["method"])
        prompt_scores = scorer.scores(result.images, [request.prompt] * len(result.images))
        negative_scores = scorer.scores(result.images, [request.negative] * len(result.images))
        return {"method": payload["method"], "prompt_score": prompt_scores, "negative_score": negative_scores}

    batch.run_items(items, out, work, device=device)
    records = batch.read_manifest(out, {item.key for item in items})
    summary = {}
    for method in generation.METHODS:
        rows = [r for r in records if r["method"] == method]
        summary[method] = {
            "clip_prompt": statistics.fmean(s for r in rows for s in r["prompt_score"]),
            "clip_negative": statistics.fmean(s for r in rows for s in r["negative_score"]),
            "samples": sum(len(r["prompt_score"]) for r in rows),
        }
    (out / "user-results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
