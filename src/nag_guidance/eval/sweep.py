"""The sweep behind the embedded model's ``tiny`` preset (and ``suite.VSF_SCALE``), chosen for the worst kind.

Stage 1 measures a coarse grid of NAG's (s, τ, α), a few early ends and VSF scales at 4 steps on the core kinds
with few seeds; stage 2 re-measures the best of each method by worst kind with more seeds on every kind. The pick:
among the stage-2 candidates that keep adherence within ``ADHERENCE_BAND`` of unguided on every core kind (the
prompt's subject is never lost), the one whose worst core-kind margin is largest, where a kind's margin is the
smallest of (suppression − 80 %, adherence change + 3 points, clean-rate change): the issue's target is met where
every margin is ≥ 0.

    python -m nag_guidance.eval.sweep --out runs/sweep            # both stages (about an hour on 2 CPU cores)
    python -m nag_guidance.eval.sweep --model tiny-flux --out runs/sweep-flux
    python -m nag_guidance.eval.sweep --out runs/sweep --page docs/preset-sweep.md   # the page from the records
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nag_guidance.eval.suite import (
    ALL_KINDS,
    KINDS,
    REPORTING_SEED_START,
    TUNING_SEED_START,
    Condition,
    pairs,
    seed_list,
    seed_range_text,
)

GRID = [(s, t, a) for s in (3.0, 5.0) for t in (1.25, 1.5, 2.0, 2.5) for a in (0.25, 0.5)]
ENDS = [(5.0, 1.25, 0.5, e) for e in (0.5, 0.75)] + [(3.0, 1.5, 0.5, e) for e in (0.5, 0.75)]
ENDS += [(5.0, 2.5, 0.5, e) for e in (0.5, 0.75)] + [(3.0, 2.5, 0.5, 0.5), (5.0, 1.5, 1.0, 0.5), (5.0, 1.25, 1.0, 0.5)]
VSF_SCALES = (0.25, 0.5, 1.0, 2.0, 3.5)  # 3.5: the VSF authors' value for Flux-schnell and SD3.5
COARSE_SEEDS, FINAL_SEEDS, FINALISTS = 8, 24, 4
ADHERENCE_BAND = 0.03
TARGET_SUPPRESSION = 0.8


def stage_one(model: str = "tiny") -> list[Condition]:
    """The coarse grid for one embedded model (the early ends on the UNet model only: tiny-flux costs twice as much
    per sample, and on the UNet model no end beat the full window at stage 2)."""
    nag = [Condition("nag", 4, scale=s, tau=t, alpha=a, model=model) for s, t, a in GRID]
    if model == "tiny":
        nag += [Condition("nag", 4, scale=s, tau=t, alpha=a, end=e, model=model) for s, t, a, e in ENDS]
    vsf = [Condition("vsf", 4, scale=v, model=model) for v in VSF_SCALES]
    return [Condition("none", 4, model=model), *nag, *vsf]


def measure(
    conditions: list[Condition], kinds: tuple[str, ...], seeds: int, out: Path, seed_start: int = TUNING_SEED_START
) -> list[dict]:
    """One record per (condition, kind), appended to ``out`` as JSON lines (kept from an earlier run), on
    ``seeds`` seeds from ``seed_start`` (the tuning range by default: what a sweep picks is reported on others)."""
    from nag_guidance.eval.runner import Evaluator

    chosen = seed_list(seeds, seed_start)
    done = read(out) if out.exists() else []
    done = [r for r in done if r.get("seeds", [0, seeds]) == [seed_start, seeds]]  # another seed range: redo
    have = {(r["label"], r["kind"]) for r in done}
    evaluator = Evaluator()
    with out.open("a", encoding="utf-8") as file:
        for condition in conditions:
            for kind in kinds:
                if (condition.label, kind) in have:
                    continue
                result, _ = evaluator.measure(condition, kind, pairs((kind,)), chosen)
                record = {"label": condition.label, "condition": condition.as_dict(), **result}
                file.write(json.dumps(record) + "\n")
                file.flush()
                done.append(record)
    return done


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def changes(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per condition label and kind: suppression, adherence change and clean-rate change against unguided."""
    none = {r["kind"]: r for r in records if r["label"] == "none"}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        base = none.get(r["kind"])
        if r["label"] == "none" or base is None:
            continue
        suppression = 1.0 - r["negative_rate"] / base["negative_rate"] if base["negative_rate"] > 0 else None
        adherence, clean = r["adherence"] - base["adherence"], r["clean"] - base["clean"]
        cells, base_cells = r.get("cells"), base.get("cells")
        if cells and base_cells and len(cells["adherent"]) == len(base_cells["adherent"]):
            # row by row (pair, seed): where prompts have unequal numbers of pairs, the distinct-image mean of
            # the unguided images weights them differently from the guided rows
            from nag_guidance.eval.runner import unbits

            adherence = float(unbits(cells["adherent"]).mean() - unbits(base_cells["adherent"]).mean())
            clean = float(unbits(cells["clean"]).mean() - unbits(base_cells["clean"]).mean())
        table.setdefault(r["label"], {})[r["kind"]] = {"suppression": suppression, "adherence": adherence,
                                                       "clean": clean}  # fmt: skip
    return table


def worst_margin(kinds: dict[str, dict[str, float]]) -> float:
    """The smallest margin to the target over the core kinds (≥ 0: the target is met on every one)."""
    margins = []
    for kind in KINDS:
        c = kinds[kind]
        margins += [c["suppression"] - TARGET_SUPPRESSION, c["adherence"] + ADHERENCE_BAND, c["clean"]]
    return min(margins)


def keeps_the_subject(kinds: dict[str, dict[str, float]]) -> bool:
    return all(kinds[kind]["adherence"] >= -ADHERENCE_BAND for kind in KINDS)


def complete(table: dict) -> dict:
    return {label: kinds for label, kinds in table.items() if all(kind in kinds for kind in KINDS)}


def finalists(coarse: dict) -> list[str]:
    """The best ``FINALISTS`` NAG conditions of stage 1 by worst margin, and every VSF scale (VSF is the baseline:
    it gets its best showing by the same rule)."""
    ranked = sorted(complete(coarse), key=lambda label: worst_margin(coarse[label]), reverse=True)
    nag = [label for label in ranked if label.startswith("nag")][:FINALISTS]
    return nag + [label for label in ranked if label.startswith("vsf")]


def pick(final: dict, method: str) -> str | None:
    """The chosen condition of one method (see the module docstring); where no candidate keeps the subject, the
    best worst margin of all (the page says so)."""
    candidates = [label for label, kinds in complete(final).items() if label.startswith(method)]
    kept = [label for label in candidates if keeps_the_subject(final[label])]
    return max(kept or candidates, key=lambda label: worst_margin(final[label]), default=None)


def _cells(kinds: dict[str, dict[str, float]], names: tuple[str, ...]) -> str:
    def cell(name: str) -> str:
        c = kinds.get(name)
        if c is None:
            return "—"
        suppression = "n/a" if c["suppression"] is None else f"{100 * c['suppression']:.0f}"
        return f"{suppression} / {100 * c['adherence']:+.1f} / {100 * c['clean']:+.1f}"

    return " | ".join(cell(name) for name in names)


def seeds_of(records: list[dict]) -> str:
    """The seed range of a set of records, as the pages state it ("0–7 (tuning range)")."""
    ranges = {tuple(r["seeds"]) for r in records if "seeds" in r}
    return ", ".join(seed_range_text(tuple(r)) for r in sorted(ranges)) or "0–N−1 (not recorded)"


def page(coarse_records: list[dict], final_records: list[dict], command: str, model: str = "tiny") -> str:
    coarse, final = changes(coarse_records), changes(final_records)
    title = "the embedded model's preset" if model == "tiny" else f"the `{model}` preset"
    lines = [
        f"# How {title} was chosen",
        "",
        f"Seeds: stage 1 {seeds_of(coarse_records)}, stage 2 {seeds_of(final_records)}. The results pages report",
        f"on seeds from {REPORTING_SEED_START} on, which no sweep or option search uses.",
        "",
        f"Generated by `{command}` from the sweep's records; every number is measured. The rule (module docstring",
        "of `nag_guidance/eval/sweep.py`): the target is suppression ≥ 80 %, adherence within 3 points of unguided and",
        "a clean rate not below unguided on every core kind; among the finalists that keep adherence within the band",
        "on every core kind, the one with the largest worst margin wins. Cells: suppression % / adherence change /",
        "clean-rate change (points) against unguided, student, 4 steps.",
        "",
        f"## Stage 1: {COARSE_SEEDS} seeds per pair, core kinds, sorted by worst margin",
        "",
        "| condition | worst margin | " + " | ".join(KINDS) + " |",
        "|---|---|" + "---|" * len(KINDS),
    ]
    for label in sorted(complete(coarse), key=lambda label: worst_margin(coarse[label]), reverse=True):
        lines.append(f"| {label} | {100 * worst_margin(coarse[label]):+.1f} | {_cells(coarse[label], KINDS)} |")
    lines += [
        "",
        f"## Stage 2: {FINAL_SEEDS} seeds per pair, every kind",
        "",
        "| condition | worst margin (core) | adherence kept | " + " | ".join(ALL_KINDS) + " |",
        "|---|---|---|" + "---|" * len(ALL_KINDS),
    ]
    for label in sorted(complete(final), key=lambda label: worst_margin(final[label]), reverse=True):
        kept = "yes" if keeps_the_subject(final[label]) else "no"
        margin = 100 * worst_margin(final[label])
        lines.append(f"| {label} | {margin:+.1f} | {kept} | {_cells(final[label], ALL_KINDS)} |")
    extra = [label for label in complete(final) if label not in finalists(coarse)]
    if extra:
        lines += ["", f"Also measured at stage 2, for comparison (not finalists): {', '.join(extra)}."]
    for method in ("nag", "vsf"):
        chosen = pick(final, method)
        if chosen is None:
            continue
        verdict = "yes" if worst_margin(final[chosen]) >= 0 else "no"
        kept = "" if keeps_the_subject(final[chosen]) else " No candidate kept adherence within the band."
        lines += ["", f"**Chosen {method.upper()}: {chosen}.** Target met on every core kind: {verdict}.{kept}"]
    lines.append("")
    return "\n".join(lines)


def pair_rates(seeds: int = 64, seed_start: int = TUNING_SEED_START) -> list[dict]:
    """How often the unguided model (4 steps) shows each core pair's negative: how the README's main job was
    picked (the most frequent one), on tuning seeds."""
    from nag_guidance.eval.runner import Evaluator

    evaluator = Evaluator()
    rows = []
    for kind in KINDS:
        for pair in pairs((kind,)):
            result, _ = evaluator.measure(Condition("none", 4), kind, [pair], seed_list(seeds, seed_start))
            rows.append({"kind": kind, "prompt": pair.prompt, "negative": pair.negative, **result})
    return sorted(rows, key=lambda row: -row["negative_rate"])


MAIN_JOB = ("a orange shape", "square")
"""The README's main job: the core pair the unguided model shows its negative most often (``--pair-rates``)."""
MAIN_JOB_CFG = 5.0  # the CFG scale of `nag generate --grid`


def main_job_rates(seeds: int = 64, seed_start: int = REPORTING_SEED_START) -> list[dict]:
    """The main job's rates on reporting seeds, for its grid's caption: stock, CFG at the grid's scale and NAG
    at the ``tiny`` preset, 4 steps."""
    from nag_guidance.config import get_preset
    from nag_guidance.eval.runner import Evaluator

    pair = next(p for kind in KINDS for p in pairs((kind,)) if (p.prompt, p.negative) == MAIN_JOB)
    preset = get_preset("tiny").config
    chosen = [
        Condition("none", 4),
        Condition("cfg", 4, cfg_scale=MAIN_JOB_CFG),
        Condition("nag", 4, scale=preset.scale, tau=preset.tau, alpha=preset.alpha),
    ]
    evaluator = Evaluator()
    rows = []
    for condition in chosen:
        result, _ = evaluator.measure(condition, pair.kind, [pair], seed_list(seeds, seed_start))
        rows.append({"label": condition.label, **result})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--page", type=Path, help="write the page from the records instead of measuring")
    parser.add_argument("--pair-rates", action="store_true", help="print each core pair's unguided negative rate")
    parser.add_argument("--model", default="tiny", choices=("tiny", "tiny-flux"), help="the embedded model")
    parser.add_argument("--seed-start", type=int, default=TUNING_SEED_START, help="first seed (default: tuning)")
    parser.add_argument(
        "--main-job", action="store_true", help="print the main job's rates on 64 reporting seeds (its caption)"
    )
    args = parser.parse_args(argv)
    if args.main_job:
        rows = main_job_rates()
        print(f"{MAIN_JOB[0]!r} − {MAIN_JOB[1]!r}, 4 steps, seeds {seeds_of(rows)}:")
        for r in rows:
            print(
                f"{r['label']:>22}: negative {100 * r['negative_rate']:.1f} % "
                f"[{100 * r['negative_rate_low']:.1f}, {100 * r['negative_rate_high']:.1f}], adherence "
                f"{100 * r['adherence']:.1f} %, clean {100 * r['clean']:.1f} %"
            )
        return
    coarse_path, final_path = args.out / "stage1.jsonl", args.out / "stage2.jsonl"
    if args.pair_rates:
        for row in pair_rates(seed_start=args.seed_start):
            print(f"{100 * row['negative_rate']:5.1f} %  {row['prompt']!r} − {row['negative']!r}")
        return
    if args.page is None:
        import torch

        torch.set_num_threads(1)
        args.out.mkdir(parents=True, exist_ok=True)
        coarse = changes(measure(stage_one(args.model), KINDS, COARSE_SEEDS, coarse_path, args.seed_start))
        chosen = [c for c in stage_one(args.model) if c.label == "none" or c.label in finalists(coarse)]
        measure(chosen, ALL_KINDS, FINAL_SEEDS, final_path, args.seed_start)
        return
    model = "" if args.model == "tiny" else f" --model {args.model}"
    command = f"python -m nag_guidance.eval.sweep{model} --out {args.out} --page {args.page}"
    args.page.write_text(page(read(coarse_path), read(final_path), command, args.model), encoding="utf-8")


if __name__ == "__main__":
    main()
