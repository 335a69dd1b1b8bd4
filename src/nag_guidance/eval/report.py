"""Outputs of `nag eval`: results.json / results.csv, the suppression-vs-fidelity plot, the method × scale image
grid, and the Markdown results page (with the exact command that produced it)."""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from nag_guidance.eval.suite import ALL_KINDS, REPORTING_SEED_START, UNQUALIFIED, pairs, seed_range_text
from nag_guidance.files import save_png, write_atomically, write_text_atomically

COLUMNS = (
    "label", "method", "unet", "steps", "kind", "samples", "rows", "negative_rate", "negative_rate_se",
    "negative_rate_low", "negative_rate_high", "negative_rate_shape", "negative_rate_background", "suppression",
    "suppression_se", "suppression_low", "suppression_high", "adherence", "adherence_se", "adherence_low",
    "adherence_high", "adherence_change", "adherence_change_low", "adherence_change_high", "clean_change",
    "on_palette", "entropy_bits", "clean", "confidence", "frechet",
)  # fmt: skip
PER_PAIR_KINDS = ("multi", "luminance", "inert")
"""Kinds whose pairs behave differently (a triple with white or black against one without): the page shows each
pair's row as well as the kind's."""


def flat(record: dict) -> dict[str, Any]:
    c, r = record["condition"], record["result"]
    return {
        "label": c["label"], "method": c["method"], "unet": c["unet"], "steps": c["steps"], "kind": r["kind"],
        **{k: r.get(k) for k in COLUMNS[5:]},
    }  # fmt: skip


def _interval(r: dict, name: str, percent: bool = True, digits: int = 1) -> str:
    """ "9.6 [5.5, 13.7]": the value and its 95 % interval (cluster-robust over prompts and seeds)."""
    value, low, high = r.get(name), r.get(f"{name}_low"), r.get(f"{name}_high")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    k = 100 if percent else 1
    text = f"{k * value:.{digits}f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        if name in RATES:  # a share: its interval stops at 0 and 100 %
            low, high = max(low, 0.0), min(high, 1.0)
        text += f" [{k * low:.{digits}f}, {k * high:.{digits}f}]"
    return text


RATES = ("negative_rate", "adherence")


def _negative(r: dict) -> str:
    text = _interval(r, "negative_rate")
    if r["kind"] in UNQUALIFIED and r.get("negative_rate_shape") is not None:
        text += f" ({100 * r['negative_rate_shape']:.1f} / {100 * r['negative_rate_background']:.1f})"
    return text


def _records_seeds(records: list[dict]) -> str:
    ranges = {tuple(r["result"]["seeds"]) for r in records if "seeds" in r["result"]}
    return ", ".join(seed_range_text(s) for s in sorted(ranges)) or "not recorded"


def write_tables(records: list[dict], out: Path) -> None:
    """results.json and results.csv, each whole or not at all (``files``)."""
    write_text_atomically(out / "results.json", json.dumps(records, indent=1, default=str))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(flat(r) for r in records)
    write_text_atomically(out / "results.csv", table.getvalue())


def plot(records: list[dict], path: Path) -> None:
    """Suppression (x) against Fréchet distance (y, lower is better) per method, one panel per model/steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [flat(r) for r in records]
    rows = [r for r in every if r["suppression"] is not None]  # None: the baseline never showed the negative
    panels = sorted({(r["unet"], r["steps"]) for r in every}, key=lambda p: (p[0] == "teacher", p[1]))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    colours = {"none": "black", "cfg": "tab:red", "nag": "tab:blue", "nag+cfg": "tab:purple"}
    for axis, (unet, steps) in zip(axes[0], panels, strict=True):
        for method, colour in colours.items():
            points = [r for r in rows if (r["unet"], r["steps"], r["method"]) == (unet, steps, method)]
            if points:
                axis.scatter(
                    [p["suppression"] for p in points], [p["frechet"] for p in points], c=colour, s=14, label=method
                )
        axis.set_title(f"{unet}, {steps} step{'s' if steps > 1 else ''}")
        axis.set_xlabel("suppression of the negative (1 = gone)")
        axis.set_xlim(-0.3, 1.05)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("Fréchet distance to real (lower = better)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(loc="best", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda file: figure.savefig(file, dpi=110, format="png"))
    plt.close(figure)


def image_grid(records: list[dict], samples: Path, path: Path, unet: str, steps: int, kind: str) -> None:
    """One row per condition (method × parameters) of one model/steps/kind: the strip of sample images of the
    kind's first prompt/negative pair, labelled."""
    chosen = [
        r
        for r in records
        if (r["condition"]["unet"], r["condition"]["steps"], r["result"]["kind"]) == (unet, steps, kind)
    ]
    if not chosen:
        return
    strips = [Image.open(samples / r["sample"]) for r in chosen]
    zoom, label = 3, 230
    width = label + strips[0].width * zoom
    height = sum(s.height * zoom + 2 for s in strips) + 22
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    pair = chosen[0]["pair"]
    draw.text((4, 4), f"{pair['prompt']!r} - {pair['negative']!r}  ({unet}, {steps} steps)", fill="black")
    y = 22
    for record, strip in zip(chosen, strips, strict=True):
        label_text = record["condition"]["label"].replace("τ", "tau").replace("α", "alpha")  # PIL's font is ASCII
        draw.text((4, y + strip.height * zoom // 2 - 6), label_text, fill="black")
        canvas.paste(strip.resize((strip.width * zoom, strip.height * zoom), Image.NEAREST), (label, y))
        y += strip.height * zoom + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(canvas, path)


def headline(records: list[dict], steps: int = 4) -> list[str]:
    """The comparison the paper makes, at the student's default steps: nothing, CFG, VSF, NAG at the embedded
    model's preset and NAG + CFG, per kind (the full sweeps follow in the per-kind tables)."""
    from nag_guidance.config import get_preset

    model = _model(records)
    preset = get_preset(model).config
    point = (preset.scale, preset.tau, preset.alpha)

    def shown(c: dict) -> bool:
        nag_point = (c["scale"], c["tau"], c["alpha"]) == point
        return c["method"] in ("none", "cfg", "vsf") or (c["method"] in ("nag", "nag+cfg") and nag_point)

    chosen = [r for r in records if (r["condition"]["unet"], r["condition"]["steps"]) == ("student", steps)]
    chosen = [r for r in chosen if shown(r["condition"])]
    if not chosen:
        return []
    lines = [
        f"## Headline: student, {steps} steps, NAG at the `{model}` preset (s={point[0]:g}, τ={point[1]:g}, "
        f"α={point[2]:g})",
        "",
        HEADER.replace("| condition |", "| kind | condition |"),
        RULE + "---|",
    ]
    for kind in ALL_KINDS:
        for r in (flat(rec) for rec in chosen if rec["result"]["kind"] == kind):
            lines.append(f"| {kind} | {_row(r)}")
    return [*lines, ""]


HEADER = (
    "| condition | images | negative % [95 %] (shape / bg) | suppression % [95 %] | adherence % [95 %] | "
    "Δ adherence [95 %] | on-palette % | entropy | clean % | Δ clean | FD |"
)
RULE = "|---|---|---|---|---|---|---|---|---|---|---|"


def _row(r: dict) -> str:
    change = "—" if r.get("adherence_change") is None else _interval(r, "adherence_change")
    clean_change = "—" if r.get("clean_change") is None else f"{100 * r['clean_change']:+.1f}"
    return (
        f"{r['label']} | {r['samples']} | {_negative(r)} | {_interval(r, 'suppression', digits=0)} | "
        f"{_interval(r, 'adherence')} | {change} | {_fmt(r['on_palette'])} | "
        f"{_fmt(r['entropy_bits'], percent=False)} | {_fmt(r['clean'])} | {clean_change} | "
        f"{_fmt(r['frechet'], percent=False)} |"
    )


CELL_COLUMNS = ("negative", "named", "adherent")


def per_pair(records: list[dict], kind: str, unet: str = "student", steps: int = 4) -> list[str]:
    """One row per pair of ``kind``: each compared condition's negative rate / adherence on that pair alone
    (the kind's rows average pairs that can behave oppositely)."""
    from nag_guidance.eval.runner import unbits

    chosen = [
        r
        for r in records
        if (r["condition"]["unet"], r["condition"]["steps"], r["result"]["kind"]) == (unet, steps, kind)
        and r["result"].get("cells")
    ]
    if not chosen:
        return []
    suite = pairs((kind,), quick=chosen[0].get("quick", False))
    count = chosen[0]["result"]["seeds"][1]
    chosen = [r for r in chosen if len(r["result"]["cells"]["negative"]) == len(suite) * count]
    labels = [r["condition"]["label"] for r in chosen]
    lines = [
        f"### {kind}, pair by pair: negative % (on the shape) / adherence % ({unet}, "
        f"{steps} step{'s' if steps > 1 else ''}, "
        f"{count} seeds per pair)",
        "",
        "| prompt | negative | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    columns = [
        tuple(unbits(r["result"]["cells"].get(name, r["result"]["cells"]["negative"])) for name in CELL_COLUMNS)
        for r in chosen
    ]
    for i, pair in enumerate(suite):
        rows = slice(i * count, (i + 1) * count)
        cells = []
        for neg, named, adh in columns:
            slot = f" ({100 * named[rows].mean():.0f})" if pair.anywhere else ""
            cells.append(f"{100 * neg[rows].mean():.0f}{slot} / {100 * adh[rows].mean():.0f}")
        shown = f"`{pair.negative}`" + ("" if pair.avoid else " (inert)")
        lines.append(f"| `{pair.prompt}` | {shown} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _model(records: list[dict]) -> str:
    return records[0]["condition"].get("model", "tiny") if records else "tiny"


def _fmt(value: Any, se: Any = None, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if percent:
        text = f"{100 * value:.1f}"
        return text + (f" ± {100 * se:.1f}" if se is not None else "")
    return f"{value:.2f}"


def markdown(records: list[dict], command: str, figures: dict[str, str]) -> str:
    """The results page: headline table per kind at 4 student steps, the other step counts, notes, command."""
    rows = [flat(r) for r in records]
    model = _model(records)
    subject = "the embedded model" if model == "tiny" else f"the embedded `{model}` model"
    lines = [
        f"# Results: NAG vs CFG vs VSF vs nothing on {subject}",
        "",
        "Generated by `nag eval`; every number below is measured, none is typed in. Reproduce with:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, Python {platform.python_version()}.",
        "",
        f"Seeds: {_records_seeds(records)}. The presets and option choices were tuned on seeds below "
        f"{REPORTING_SEED_START} (the sweep pages), so nothing here is measured on the seeds it was picked on.",
        "",
        "Columns: **images** = distinct images behind the row (an unguided image depends on its prompt and seed "
        "only: it is generated and counted once and read against every negative of its prompt); **negative** = "
        'share of (pair, seed) readings showing the negative — a bare colour ("red") counts wherever it '
        "appears, shape or background, and the parentheses split it (on the shape / on the background; one "
        "image can show it on both); a negative that "
        'names its slot ("red background") counts there only; **suppression** = 1 − negative/negative(none) at '
        "the same model, steps and seeds; **adherence** = the prompt's own attributes read right; **Δ adherence** "
        "and **Δ clean** = the change against unguided on the same prompts and seeds (points); **on-palette** = "
        "shape colours that are palette colours at all (collapse detector); **entropy** = bits of the attribute's "
        "distribution (collapse detector); **clean** = flat colours and sharp edges per the checker; **FD** = "
        "Fréchet distance of classifier features to real images of the prompt without the negative's value "
        "(lower = better fidelity). Brackets are 95 % intervals (of a share: cut at 0 and 100), two-way "
        "cluster-robust over prompts and seeds "
        "(`nag_guidance/eval/stats.py`): the pairs of a kind share their seeds and prompts, so the binomial "
        "error of independent samples would be too small.",
        "",
    ]
    header, rule = HEADER, RULE
    lines += headline(records)
    for unet, steps in sorted({(r["unet"], r["steps"]) for r in rows}, key=lambda p: (p[0] == "teacher", p[1])):
        for kind in ALL_KINDS:
            chosen = [r for r in rows if (r["unet"], r["steps"], r["kind"]) == (unet, steps, kind)]
            if not chosen:
                continue
            pair = next(rec["pair"] for rec in records if flat(rec) == chosen[0])
            lines += [
                f"## {kind}: {unet}, {steps} step{'s' if steps > 1 else ''} "
                f"(e.g. {pair['prompt']!r} − {pair['negative']!r}; {chosen[0]['rows']} readings per row)",
                "",
                header,
                rule,
            ]
            lines += [f"| {_row(r)}" for r in chosen]
            lines.append("")
            if kind in PER_PAIR_KINDS:
                lines += per_pair(records, kind, unet, steps)
    for title, file in figures.items():
        lines += [f"![{title}]({file})", ""]
    return "\n".join(lines)
