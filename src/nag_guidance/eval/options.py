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
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
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


def _capped(
    z_pos: torch.Tensor, pos: torch.Tensor, tilde: torch.Tensor, tau: float, alpha: float, return_ratio: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The paper's cap and blend of an extrapolated ``tilde``, written into ``z_pos``."""
    ratio = guidance_ratio(pos, tilde)
    clip = torch.ones_like(ratio) if math.isinf(tau) else tau / ratio.clamp_min(tau)
    z_pos.copy_((alpha * clip * tilde + (1.0 - alpha) * pos).to(z_pos.dtype))
    return (z_pos, ratio) if return_ratio else z_pos


def orthogonal_guidance_(
    z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float, *, return_ratio: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Candidate for the luminance failure: extrapolate only the part of Z⁺ − Z⁻ orthogonal to the image's mean
    prompt output (the mean of Z⁺ over the image's tokens), so the direction every token shares — where a global
    brightness shift lives — is not pushed; then the paper's cap and blend."""
    pos = z_pos.float()
    delta = pos - z_neg.float()
    mean = pos.mean(dim=-2, keepdim=True)
    unit = mean / torch.linalg.vector_norm(mean, dim=-1, keepdim=True).clamp_min(1e-6)
    delta = delta - (delta * unit).sum(dim=-1, keepdim=True) * unit
    return _capped(z_pos, pos, pos + (scale - 1.0) * delta, tau, alpha, return_ratio)


def centred_guidance_(
    z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float, *, return_ratio: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Candidate: subtract the image's token mean of Z⁺ − Z⁻ before extrapolating, so guidance moves tokens
    relative to each other but not the image's average output (a uniform darkening is such an average)."""
    pos = z_pos.float()
    delta = pos - z_neg.float()
    delta = delta - delta.mean(dim=-2, keepdim=True)
    return _capped(z_pos, pos, pos + (scale - 1.0) * delta, tau, alpha, return_ratio)


GROUPS = 8


def grouped_guidance_(
    z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float, *, return_ratio: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Candidate: the paper's ratio and cap per group of ``GROUPS`` channel groups of each token rather than per
    token, so a group the negative moves a lot is capped without capping the others."""
    pos = z_pos.float()
    channels = pos.shape[-1]
    groups = GROUPS if channels % GROUPS == 0 else 1
    pos_g = pos.unflatten(-1, (groups, channels // groups))
    neg_g = z_neg.float().unflatten(-1, (groups, channels // groups))
    tilde = scale * pos_g - (scale - 1.0) * neg_g
    ratio = guidance_ratio(pos_g, tilde)
    clip = torch.ones_like(ratio) if math.isinf(tau) else tau / ratio.clamp_min(tau)
    z_pos.copy_((alpha * clip * tilde + (1.0 - alpha) * pos_g).flatten(-2).to(z_pos.dtype))
    return (z_pos, ratio) if return_ratio else z_pos


OPERATORS = {
    "relative": relative_tau_guidance_,
    "orthogonal": orthogonal_guidance_,
    "centred": centred_guidance_,
    "grouped": grouped_guidance_,
}
"""Evaluation-only operators, by the name a ``Condition.operator`` gives (the paper's stays the library's)."""


@contextmanager
def swapped_operator(name: str) -> Iterator[None]:
    """Inside the block, NAG-applied pipelines guide with ``OPERATORS[name]`` (evaluation only)."""
    from nag_guidance.integration import state

    original = state.normalized_attention_guidance_
    state.normalized_attention_guidance_ = OPERATORS[name]
    try:
        yield
    finally:
        state.normalized_attention_guidance_ = original


def relative_tau() -> AbstractContextManager[None]:
    """Inside the block, NAG-applied pipelines guide with ``relative_tau_guidance_`` (evaluation only)."""
    return swapped_operator("relative")


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


LUMINANCE_CANDIDATES = ("orthogonal", "centred", "grouped")
CFG_SCALE = 3.0
CFG_NAG_SCALES = (1.5, 2.0, 3.0)
LUMINANCE_SEEDS = (8, 16)  # tuning (stage 1), reporting (stage 2) seeds per pair


def luminance_conditions(model: str = "tiny") -> list[Condition]:
    """Unguided, the preset with the paper's operator, and each candidate operator at the preset's (s, τ, α)."""
    preset = preset_condition(model)
    fields = dict(scale=preset.scale, tau=preset.tau, alpha=preset.alpha, model=model)
    candidates = [Condition("nag", 4, operator=name, **fields) for name in LUMINANCE_CANDIDATES]
    return [Condition("none", 4, model=model), preset, *candidates]


def cfg_conditions(model: str = "tiny") -> list[Condition]:
    """CFG 3 alone, NAG alone at the preset, and NAG under CFG 3 at the preset and at lower NAG scales."""
    preset = preset_condition(model)
    pooled = "prompt" if model == "tiny-flux" else None
    fields = dict(tau=preset.tau, alpha=preset.alpha, model=model, pooled=pooled)
    scales = sorted({*(s for s in CFG_NAG_SCALES if s < preset.scale), preset.scale})
    under = [Condition("nag+cfg", 4, cfg_scale=CFG_SCALE, scale=s, **fields) for s in scales]
    cfg = Condition("cfg", 4, cfg_scale=CFG_SCALE, model=model)
    return [Condition("none", 4, model=model), cfg, preset, *under]


def _cells(record: dict, name: str):
    from nag_guidance.eval.runner import unbits

    return unbits(record["cells"][name])


def paired_difference(record: dict, other: dict, column: str):
    """``record`` − ``other`` in the mean of a cell column, on the same pairs and seeds, cluster-robust."""
    from nag_guidance.eval import stats
    from nag_guidance.eval.suite import pairs

    start, count = record["seeds"]
    suite = pairs((record["kind"],))
    prompts = [p.prompt for p in suite for _ in range(count)]
    seeds = [s for _ in suite for s in range(start, start + count)]
    columns = {"a": _cells(record, column), "b": _cells(other, column)}
    return stats.clustered_statistic(columns, prompts, seeds, lambda m: m["a"] - m["b"])


def luminance_verdict(records: list[dict], candidate: str, preset: str) -> tuple[bool, list[str]]:
    """The issue's rule: the candidate wins on ``luminance`` (its adherence higher than the preset's, the paired
    95 % interval above 0, suppression not more than 1 point lower) without losing more than 1 point of
    suppression or adherence against the preset on any other kind. Returns the verdict and its reasons."""
    by = {(r["label"], r["kind"]): r for r in records}
    table = sweep.changes(records)
    reasons, ok = [], True
    lum = paired_difference(by[(candidate, "luminance")], by[(preset, "luminance")], "adherent")
    if not lum.low > 0:
        ok = False
        reasons.append(
            f"luminance adherence {100 * lum.value:+.1f} points [{100 * lum.low:+.1f}, {100 * lum.high:+.1f}]: "
            "not above the preset's"
        )
    for kind in sorted({k for _, k in by}):
        c, p = table[candidate].get(kind), table[preset].get(kind)
        if c is None or p is None:
            continue
        known = c["suppression"] is not None and p["suppression"] is not None
        if known and c["suppression"] < p["suppression"] - 0.01:
            ok = False
            reasons.append(f"{kind}: {100 * (p['suppression'] - c['suppression']):.1f} points less suppression")
        if kind != "luminance" and c["adherence"] < p["adherence"] - 0.01:
            ok = False
            reasons.append(f"{kind}: {100 * (p['adherence'] - c['adherence']):.1f} points less adherence")
    return ok, reasons


def rule_margin(table: dict, candidate: str, preset: str) -> float:
    """How far a candidate is from the win rule, from point values (> 0: it meets it): the smallest of its
    luminance adherence gain over the preset and, on every kind, its suppression and adherence change against
    the preset's plus the 1 point allowed (luminance adherence counts as the gain only)."""
    margins = [table[candidate]["luminance"]["adherence"] - table[preset]["luminance"]["adherence"]]
    for kind, c in table[candidate].items():
        p = table[preset].get(kind)
        if p is None:
            continue
        if c["suppression"] is not None and p["suppression"] is not None:
            margins.append(c["suppression"] - p["suppression"] + 0.01)
        if kind != "luminance":
            margins.append(c["adherence"] - p["adherence"] + 0.01)
    return min(margins)


def best_luminance(records: list[dict], model: str) -> str:
    """Stage 1's best candidate: the largest ``rule_margin`` against the preset."""
    table = sweep.changes(records)
    preset = preset_condition(model).label
    labels = [c.label for c in luminance_conditions(model)[2:] if c.label in table]
    return max(labels, key=lambda label: rule_margin(table, label, preset))


def _full_table(table: dict, kinds: tuple[str, ...]) -> list[str]:
    lines = ["| condition | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for label, cells in table.items():
        lines.append(f"| {label} | {sweep._cells(cells, kinds)} |")
    return lines


def luminance_page(sections: dict[str, tuple[list[dict], list[dict]]], command: str) -> str:
    from nag_guidance.eval.suite import ALL_KINDS

    lines = [
        "# The luminance failure: candidate operators",
        "",
        f"Generated by `{command}` from its records; every number is measured (`nag_guidance/eval/options.py`).",
        "The failure (`luminance` kind of `nag eval`): a white or black negative against the opposite background,",
        "or a colour triple with white or black, fades the subject. Stage 1 measures each candidate operator at the",
        "model's preset (s, τ, α) on tuning seeds; stage 2 re-measures the best one and the paper's operator on",
        "reporting seeds (the best: the largest stage-1 rule margin, the smallest of its luminance adherence gain and",
        "of its suppression and adherence changes against the paper's operator plus 1 point on every kind).",
        "The rule: a candidate wins if its luminance adherence is above the paper operator's (paired",
        "95 % interval, cluster-robust over prompts and seeds, above 0) and it loses no more than 1 point of",
        "suppression or adherence on any other kind. Cells: suppression % / adherence change / clean-rate change",
        "(points) against unguided, 4 steps.",
        "",
        "- `orthogonal`: extrapolate only the part of Z⁺ − Z⁻ orthogonal to the image's mean prompt output.",
        "- `centred`: subtract the image's token mean of Z⁺ − Z⁻ before extrapolating.",
        f"- `grouped`: the ratio and cap per channel group ({GROUPS} groups per token) instead of per token.",
        "",
    ]
    for model, (coarse, final) in sections.items():
        preset = preset_condition(model).label
        best = best_luminance(coarse, model)
        kinds = tuple(k for k in ALL_KINDS if any(r["kind"] == k for r in final))
        wins, reasons = luminance_verdict(final, best, preset)
        table = sweep.changes(coarse)
        margins = ", ".join(
            f"{c.label.split('op=')[1]} {100 * rule_margin(table, c.label, preset):+.1f}"
            for c in luminance_conditions(model)[2:]
            if c.label in table
        )
        lines += [
            f"## `{model}`",
            "",
            f"Stage 1, {sweep.seeds_of(coarse)}:",
            "",
            *_full_table(sweep.complete(sweep.changes(coarse)), kinds),
            "",
            f"Stage 1 rule margins (points; > 0 meets the rule on point values): {margins}. Best: {best}.",
            "",
            f"Stage 2, {sweep.seeds_of(final)}:",
            "",
            *_full_table(sweep.complete(sweep.changes(final)), kinds),
            "",
            f"**{best} {'wins' if wins else 'does not win'} against the paper's operator ({preset}).** "
            + ("; ".join(reasons) + "." if reasons else ""),
            "",
        ]
    return "\n".join(lines)


def cfg_page(sections: dict[str, list[dict]], command: str) -> str:
    from nag_guidance.eval.suite import ALL_KINDS

    lines = [
        "# NAG under CFG: does a lower NAG scale compose?",
        "",
        f"Generated by `{command}` from its records; every number is measured (`nag_guidance/eval/options.py`).",
        f"CFG w = {CFG_SCALE:g} alone, NAG alone at the model's preset and NAG under CFG at the preset's scale and",
        "lower ones, 4 steps, on tuning seeds. Cells: suppression % / adherence change / clean-rate change (points)",
        "against unguided; the worst margin is the sweep's (target: suppression ≥ 80 %, adherence within 3 points,",
        "clean rate not below unguided, on every core kind).",
        "",
    ]
    for model, records in sections.items():
        table = sweep.complete(sweep.changes(records))
        kinds = tuple(k for k in ALL_KINDS if any(r["kind"] == k for r in records))
        ranked = sorted(table, key=lambda label: sweep.worst_margin(table[label]), reverse=True)
        lines += [f"## `{model}` ({sweep.seeds_of(records)})", "", "| condition | worst margin | " + " | ".join(kinds)]
        lines[-1] += " |"
        lines.append("|---|---|" + "---|" * len(kinds))
        for label in ranked:
            margin = 100 * sweep.worst_margin(table[label])
            lines.append(f"| {label} | {margin:+.1f} | {sweep._cells(table[label], kinds)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=MODELS, help="the embedded model to measure")
    parser.add_argument("--out", type=Path, default=Path("runs/options"))
    parser.add_argument("--flux-out", type=Path, help="with --page: the tiny-flux records, for its section")
    parser.add_argument("--page", type=Path, help="write the page from the records instead of measuring")
    parser.add_argument("--seed-start", type=int, default=TUNING_SEED_START, help="first seed (default: tuning)")
    parser.add_argument(
        "--search", default="tau", choices=("tau", "luminance", "cfg"),
        help="relative τ (default), the luminance candidates, or NAG's scale under CFG",
    )  # fmt: skip
    parser.add_argument(
        "--luminance-seeds", type=lambda t: tuple(int(x) for x in t.split(",")), default=LUMINANCE_SEEDS,
        help="seeds per pair for the luminance search's two stages, e.g. 8,16 (the default)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.search != "tau":
        _other_search(args)
        return
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


def _other_search(args: argparse.Namespace) -> None:
    from nag_guidance.eval.suite import ALL_KINDS, REPORTING_SEED_START

    folders = {"tiny": args.out, **({"tiny-flux": args.flux_out} if args.flux_out else {})}
    flux = f" --flux-out {args.flux_out}" if args.flux_out else ""
    command = f"python -m nag_guidance.eval.options --search {args.search} --out {args.out}{flux} --page {args.page}"
    if args.search == "luminance":
        if args.page is not None:
            sections = {m: (sweep.read(f / "stage1.jsonl"), sweep.read(f / "stage2.jsonl")) for m, f in folders.items()}
            args.page.write_text(luminance_page(sections, command), encoding="utf-8")
            return
        torch.set_num_threads(1)
        args.out.mkdir(parents=True, exist_ok=True)
        coarse = sweep.measure(
            luminance_conditions(args.model),
            ALL_KINDS,
            args.luminance_seeds[0],
            args.out / "stage1.jsonl",
            args.seed_start,
        )
        best = best_luminance(coarse, args.model)
        chosen = [c for c in luminance_conditions(args.model)[:2]] + [
            c for c in luminance_conditions(args.model) if c.label == best
        ]
        sweep.measure(chosen, ALL_KINDS, args.luminance_seeds[1], args.out / "stage2.jsonl", REPORTING_SEED_START)
        return
    if args.page is not None:
        sections = {m: sweep.read(f / "cfg.jsonl") for m, f in folders.items()}
        args.page.write_text(cfg_page(sections, command), encoding="utf-8")
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = (*KINDS, "luminance", "contrast")
    sweep.measure(cfg_conditions(args.model), kinds, sweep.COARSE_SEEDS, args.out / "cfg.jsonl", args.seed_start)


if __name__ == "__main__":
    main()
