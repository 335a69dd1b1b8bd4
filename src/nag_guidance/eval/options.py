"""Operator options measured against the paper's fixed (s, τ, α), where the fixed operator misses the worst-kind
target (``sweep.py``): candidates for a library option, which one becomes only if it measurably wins.

Relative τ: the cap is a multiple of the layer's median per-token ratio, per image (τ_eff = τ · median r over the
image's tokens), instead of one number for every layer, step and image. At the ``tiny`` preset every token is
clipped (mean r ≈ 4 against τ = 1.25), so a fixed τ sets every token's norm to τ·‖Z+‖; a relative cap leaves the
tokens the negative moves least unclipped and caps the rest at the layer's own typical ratio.

Two stages, as in the sweep: every option and the preset with few seeds, then the best option and the preset again
with the sweep's final seed count (8 seeds per pair left the tiny-flux preset's worst margin 10 points off its
24-seed value). The verdict is stage 2's.

    python -m nag_guidance.eval.options --out runs/options                  # measure (about 10 minutes here, each)
    python -m nag_guidance.eval.options --model tiny-flux --out runs/options-flux
    python -m nag_guidance.eval.options --out runs/options --flux-out runs/options-flux --page docs/preset-options.md
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from nag_guidance.config import get_preset
from nag_guidance.eval import sweep
from nag_guidance.eval.suite import KINDS, TUNING_SEED_START, Condition
from nag_guidance.functional import guidance_ratio

RELATIVE_TAUS = (0.35, 0.5, 0.75, 1.0)
MODELS = ("tiny", "tiny-flux")


def relative_tau_guidance_(
    z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float, *, return_ratio: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``functional.normalized_attention_guidance_`` with the cap τ · (median of r over each image's tokens)."""
    pos = z_pos.float()
    tilde = scale * pos - (scale - 1.0) * z_neg.float()
    ratio = guidance_ratio(pos, tilde)
    cap = tau * ratio.median(dim=-2, keepdim=True).values
    clip = cap / ratio.clamp_min(cap)
    z_pos.copy_((alpha * clip * tilde + (1.0 - alpha) * pos).to(z_pos.dtype))
    return (z_pos, ratio) if return_ratio else z_pos


@contextmanager
def relative_tau() -> Iterator[None]:
    """Inside the block, NAG-applied pipelines guide with ``relative_tau_guidance_`` (evaluation only)."""
    from nag_guidance.integration import state

    original = state.normalized_attention_guidance_
    state.normalized_attention_guidance_ = relative_tau_guidance_
    try:
        yield
    finally:
        state.normalized_attention_guidance_ = original


def preset_condition(model: str) -> Condition:
    """The model's preset (of the same name), measured in the same run as the options."""
    config = get_preset(model).config
    return Condition("nag", 4, scale=config.scale, tau=config.tau, alpha=config.alpha, model=model)


def conditions(model: str = "tiny") -> list[Condition]:
    """Relative τ at two scales and the model's preset α."""
    alpha = get_preset(model).config.alpha
    relative = [
        Condition("nag", 4, scale=s, tau=t, alpha=alpha, tau_mode="relative", model=model)
        for s in (3.0, 5.0)
        for t in RELATIVE_TAUS
    ]
    return [Condition("none", 4, model=model), preset_condition(model), *relative]


def best_relative(table: dict) -> str:
    """The relative-τ condition with the largest worst margin."""
    relative = [label for label in sweep.complete(table) if "median" in label]
    return max(relative, key=lambda label: sweep.worst_margin(table[label]))


def confirmation(model: str, coarse_records: list[dict]) -> list[Condition]:
    """Stage 2: unguided, the preset and stage 1's best relative τ."""
    best = best_relative(sweep.changes(coarse_records))
    return [c for c in conditions(model) if c.label in ("none", preset_condition(model).label, best)]


def _table(table: dict) -> list[str]:
    lines = [
        "| condition | worst margin | adherence kept | " + " | ".join(KINDS) + " |",
        "|---|---|---|" + "---|" * len(KINDS),
    ]
    for label in sorted(table, key=lambda label: sweep.worst_margin(table[label]), reverse=True):
        kept = "yes" if sweep.keeps_the_subject(table[label]) else "no"
        margin = 100 * sweep.worst_margin(table[label])
        lines.append(f"| {label} | {margin:+.1f} | {kept} | {sweep._cells(table[label], KINDS)} |")
    return lines


def _section(coarse_records: list[dict], final_records: list[dict], model: str) -> list[str]:
    coarse = sweep.complete(sweep.changes(coarse_records))
    final = sweep.complete(sweep.changes(final_records))
    preset, best = preset_condition(model).label, best_relative(coarse)
    beats = sweep.worst_margin(final[best]) > sweep.worst_margin(final[preset])
    wins = beats and (sweep.keeps_the_subject(final[best]) or not sweep.keeps_the_subject(final[preset]))
    verdict = "beats" if wins else "does not beat"
    return [
        f"## `{model}`",
        "",
        f"Stage 1, {sweep.COARSE_SEEDS} seeds per pair:",
        "",
        *_table(coarse),
        "",
        f"Stage 2, {sweep.FINAL_SEEDS} seeds per pair:",
        "",
        *_table(final),
        "",
        f"**The best relative τ ({best}) {verdict} the preset ({preset}) on the worst margin at stage 2.**",
        "",
    ]


def page(sections: dict[str, tuple[list[dict], list[dict]]], command: str) -> str:
    lines = [
        "# Operator options for the worst kind: relative τ",
        "",
        f"Generated by `{command}` from its records; every number is measured",
        "(module docstring of `nag_guidance/eval/options.py`). The same target, margins and rule as the preset sweeps",
        "([preset-sweep.md](preset-sweep.md), [preset-sweep-tiny-flux.md](preset-sweep-tiny-flux.md)), at 4 steps",
        "on the core kinds, each model's preset measured in the same run: stage 1 every option, stage 2 the best one",
        "and the preset again with more seeds.",
        "Cells: suppression % / adherence change / clean-rate change (points) against unguided.",
        "",
    ]
    for model, (coarse_records, final_records) in sections.items():
        lines += _section(coarse_records, final_records, model)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=MODELS, help="the embedded model to measure")
    parser.add_argument("--out", type=Path, default=Path("runs/options"))
    parser.add_argument("--flux-out", type=Path, help="with --page: the tiny-flux records, for its section")
    parser.add_argument("--page", type=Path, help="write the page from the records instead of measuring")
    parser.add_argument("--seed-start", type=int, default=TUNING_SEED_START, help="first seed (default: tuning)")
    args = parser.parse_args(argv)
    if args.page is not None:
        folders = {"tiny": args.out, **({"tiny-flux": args.flux_out} if args.flux_out else {})}
        sections = {
            model: (sweep.read(folder / "stage1.jsonl"), sweep.read(folder / "stage2.jsonl"))
            for model, folder in folders.items()
        }
        flux = f" --flux-out {args.flux_out}" if args.flux_out else ""
        command = f"python -m nag_guidance.eval.options --out {args.out}{flux} --page {args.page}"
        args.page.write_text(page(sections, command), encoding="utf-8")
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    coarse = sweep.measure(
        conditions(args.model), KINDS, sweep.COARSE_SEEDS, args.out / "stage1.jsonl", args.seed_start
    )
    sweep.measure(
        confirmation(args.model, coarse), KINDS, sweep.FINAL_SEEDS, args.out / "stage2.jsonl", args.seed_start
    )


if __name__ == "__main__":
    main()
