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

from nag_guidance.eval.suite import ALL_KINDS
from nag_guidance.files import save_png, write_atomically, write_text_atomically

COLUMNS = (
    "label", "method", "unet", "steps", "kind", "samples", "negative_rate", "negative_rate_se", "suppression",
    "adherence", "adherence_se", "on_palette", "entropy_bits", "clean", "confidence", "frechet",
)  # fmt: skip


def flat(record: dict) -> dict[str, Any]:
    c, r = record["condition"], record["result"]
    return {
        "label": c["label"], "method": c["method"], "unet": c["unet"], "steps": c["steps"], "kind": r["kind"],
        **{k: r.get(k) for k in COLUMNS[5:]},
    }  # fmt: skip


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
        "| kind | condition | negative % | suppression % | adherence % | on-palette % | clean % | FD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ALL_KINDS:
        for r in (flat(rec) for rec in chosen if rec["result"]["kind"] == kind):
            lines.append(
                f"| {kind} | {r['label']} | {_fmt(r['negative_rate'], r['negative_rate_se'])} | "
                f"{_fmt(r['suppression'])} | {_fmt(r['adherence'], r['adherence_se'])} | {_fmt(r['on_palette'])} | "
                f"{_fmt(r['clean'])} | {_fmt(r['frechet'], percent=False)} |"
            )
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
        "Columns: **negative** = share of samples showing the negative's attribute value (± binomial standard "
        "error); **suppression** = 1 − negative/negative(none) at the same model and steps; **adherence** = the "
        "prompt's own attributes read right; **on-palette** = shape colours that are palette colours at all "
        "(collapse detector); **entropy** = bits of the attribute's distribution (collapse detector); **clean** "
        "= flat colours and sharp edges per the checker; **FD** = Fréchet distance of classifier features to real "
        "images of the prompt without the negative's value (lower = better fidelity).",
        "",
    ]
    header = "| condition | negative % | suppression % | adherence % | on-palette % | entropy | clean % | FD |"
    rule = "|---|---|---|---|---|---|---|---|"
    lines += headline(records)
    for unet, steps in sorted({(r["unet"], r["steps"]) for r in rows}, key=lambda p: (p[0] == "teacher", p[1])):
        for kind in ALL_KINDS:
            chosen = [r for r in rows if (r["unet"], r["steps"], r["kind"]) == (unet, steps, kind)]
            if not chosen:
                continue
            pair = next(rec["pair"] for rec in records if flat(rec) == chosen[0])
            lines += [
                f"## {kind}: {unet}, {steps} step{'s' if steps > 1 else ''} "
                f"(e.g. {pair['prompt']!r} − {pair['negative']!r}; {chosen[0]['samples']} samples per row)",
                "",
                header,
                rule,
            ]
            for r in chosen:
                lines.append(
                    f"| {r['label']} | {_fmt(r['negative_rate'], r['negative_rate_se'])} | "
                    f"{_fmt(r['suppression'])} | {_fmt(r['adherence'], r['adherence_se'])} | "
                    f"{_fmt(r['on_palette'])} | {_fmt(r['entropy_bits'], percent=False)} | {_fmt(r['clean'])} | "
                    f"{_fmt(r['frechet'], percent=False)} |"
                )
            lines.append("")
    for title, file in figures.items():
        lines += [f"![{title}]({file})", ""]
    return "\n".join(lines)
