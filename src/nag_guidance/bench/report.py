"""The Markdown page of a `nag bench` result (``docs/benchmarks.md``): the numbers, and enough of the method and the
machine that a reader can tell what they mean and what they do not."""

from __future__ import annotations

from typing import Any

TARGETS = {"flux": 1.45, "sd3": 1.30}
"""The project's NAG cost targets (NAG step / unguided step) for the headline realistic shapes."""

HEADLINE_NAMES = {"flux": "FLUX.1 (`flux`)", "sd3": "SD3.5 (`sd3`)"}

COLUMNS = ("cfg", "nag", "nag_end_0.5", "nag_end_0.25", "nag_pooled_negative")
TITLES = {
    "cfg": "CFG",
    "nag": "NAG",
    "nag_end_0.5": "NAG, end 0.5",
    "nag_end_0.25": "NAG, end 0.25",
    "nag_pooled_negative": "NAG, pooled negative",
}


NOISY = 1.25
"""Repeats whose highest ratio exceeds the lowest by more than this were hit by other load: the cell is flagged."""


def _ratio(condition: dict[str, Any] | None) -> str:
    if condition is None:
        return "—"
    low, high = min(condition["ratios"]), max(condition["ratios"])
    flag = " ⚠" if high > NOISY * low else ""
    return f"{condition['median_ratio']:.2f}× ({low:.2f}–{high:.2f}){flag}"


def _repeats(rows: list[dict[str, Any]]) -> str:
    """'5 for flux, sd3; 3 for the other realistic configs; 7 for the tiny configs'."""
    parts = []
    for kind in ("full-size", "realistic", "tiny"):
        counts: dict[int, list[str]] = {}
        for row in rows:
            if row["kind"] == kind:
                counts.setdefault(row["repeats"], []).append(row["family"])
        if not counts:
            continue
        usual = max(counts, key=lambda n: len(counts[n]))
        parts += [f"{n} for the {kind} {', '.join(families)}" for n, families in counts.items() if n != usual]
        parts.append(f"{usual} for the {'other ' if len(counts) > 1 else ''}{kind} configs")
    return "; ".join(parts)


def _step_time(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.3g} ms"


def _time_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| family | unguided step | " + " | ".join(TITLES[c] for c in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        conditions = row["conditions"]
        cells = [_ratio(conditions.get(c)) for c in COLUMNS]
        lines.append(
            f"| {row['family']} | {_step_time(conditions['none']['median_ms_per_step'])} | {' | '.join(cells)} |"
        )
    return lines


def _memory_table(rows: list[dict[str, Any]]) -> list[str]:
    names = ("none", *COLUMNS)
    lines = [
        "| family | unguided | " + " | ".join(TITLES[c] for c in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        conditions = row["conditions"]
        cells = [f"{conditions[c]['peak_mib']:.1f}" if c in conditions else "—" for c in names]
        lines.append(f"| {row['family']} | {' | '.join(cells)} |")
    return lines


def _inputs(row: dict[str, Any]) -> str:
    return ", ".join(f"`{name}` {shape}" for name, shape in (row["inputs"] or {}).items())


def _built(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        shape = f"{row['shape']}. " if row["shape"] else ""
        lines.append(
            f"- **{row['family']}** (`{row['pipeline']}`): {shape}{row['denoiser']}. The denoiser saw {_inputs(row)}."
        )
    return lines


def _headline(rows: list[dict[str, Any]]) -> list[str]:
    by_family = {row["family"]: row for row in rows}
    present = [family for family in TARGETS if family in by_family]
    if not present:
        return []
    lines = [
        "## Headline: the realistic FLUX.1 and SD3.5 shapes",
        "",
        "| model | NAG / unguided | target | met | CFG / unguided | peak memory: unguided → NAG → CFG |",
        "|---|---|---|---|---|---|",
    ]
    for family in present:
        conditions = by_family[family]["conditions"]
        nag = conditions["nag"]["median_ratio"]
        memory = " → ".join(f"{conditions[c]['peak_mib']:.0f}" for c in ("none", "nag", "cfg") if c in conditions)
        lines.append(
            f"| {HEADLINE_NAMES[family]} | {_ratio(conditions['nag'])} | ≤ {TARGETS[family]:.2f}× | "
            f"{'yes' if nag <= TARGETS[family] else 'no'} | {_ratio(conditions.get('cfg'))} | {memory} MiB |"
        )
    return [*lines, ""]


def _machine(result: dict[str, Any]) -> list[str]:
    machine = result["machine"]
    environment = ", ".join(f"{k}={v}" for k, v in machine["environment"].items()) or "no OpenMP/MKL variables set"
    start, end = machine["load_average_start"], machine["load_average_end"]
    lines = [
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}; {machine['usable_cores']} usable of {machine['logical_cores']} logical cores; "
        f"torch threads: {machine['torch_threads']}; {environment}.",
    ]
    if "gpu" in machine:
        lines.append(f"- GPU: {machine['gpu']}.")
    if start is not None:
        lines.append(
            f"- 1-minute load average {start[0]:.1f} at the start and {end[0]:.1f} at the end "
            f"(on {machine['usable_cores']} cores): a load above the bench's own threads means other processes "
            "shared the cores, which the interleaved, paired ratios tolerate far better than the absolute times. "
            "With more threads than free cores, OpenMP's default spin-waiting can stall every parallel op; "
            "`OMP_WAIT_POLICY=PASSIVE` avoids that."
        )
    lines += [
        f"- torch {machine['torch']}, diffusers {machine['diffusers']}, transformers {machine['transformers']}, "
        f"Python {machine['python']}, {machine['platform']}.",
        f"- Device `{result['device']}`, dtype {result['dtype']}.",
        "",
    ]
    return lines


def _quick_note(result: dict[str, Any]) -> str:
    if any(row["kind"] == "full-size" for row in result["steps"]):
        return " (quick mode: the full-size architectures scaled down, for CI)"
    return " (quick mode: a few tiny pipelines, for CI)"


def _method(result: dict[str, Any]) -> list[str]:
    settings = result["settings"]
    cuda = result["device"].startswith("cuda")
    memory = (
        "`torch.cuda.max_memory_allocated` during the call minus what was allocated before it"
        if cuda
        else "the peak of the running sum of tensor allocations and frees recorded by the torch profiler "
        "(`profile_memory=True`) during the call — tensor bytes as torch's allocator sees them, not the process's "
        "RSS (no allocator caching or fragmentation, no non-tensor memory)"
    )
    conditions = "; ".join(f"**{TITLES.get(name, 'unguided')}**: {text}" for name, text in result["conditions"].items())
    return [
        "## How it is measured",
        "",
        f"- Conditions: {conditions}. NAG uses each family's preset scale, τ and α; the CFG negative and the NAG "
        f'negative are both "{settings["negative"]}"; prompt "{settings["prompt"]}". Families whose pipelines '
        "have no CFG with a negative prompt (FLUX.2: distilled, or CFG against the empty prompt only) show no CFG.",
        f"- Per-step time: forward pre/post hooks on the denoiser (the timing pre-hook runs before NAG's own), "
        f"summed over a pipeline call of {settings['steps']} steps and divided by the steps. Text encoding, the "
        "scheduler and latent preparation are not timed; outputs stay latent (no VAE decode). With CFG the step "
        "includes both branches (one batch of 2, or two forwards, as the pipeline does it).",
        f"- Every repeat runs all conditions, in an order that rotates from repeat to repeat. Each ratio is the "
        f"median over repeats of (condition time / unguided time of the same repeat), with the range over repeats "
        f"in brackets; the unguided step is the median time. Repeats: {_repeats(result['steps'])}. Before them, "
        "one 1-step unguided call warms up, then one 1-step call per condition measures memory. ⚠ marks a ratio "
        f"whose repeats differ by more than {100 * (NOISY - 1):.0f} %: other load hit some of them; rerun before "
        "relying on it.",
        f"- Peak memory (MiB): {memory}. The weights are allocated before the call and do not count; the text "
        "encoders' activations do (they are tiny here). A window ending early leaves NAG's peak as it is: the "
        "guided steps still reach it.",
        "",
    ]


def _tables(rows: list[dict[str, Any]], built: str = "What was built:") -> list[str]:
    """A section's time table, memory table and what was built."""
    return [
        *_time_table(rows),
        "",
        "Peak memory above the weights, MiB:",
        "",
        *_memory_table(rows),
        "",
        built,
        "",
        *_built(rows),
        "",
    ]


def _realistic(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        "## Denoiser step at realistic shapes",
        "",
        "Real token counts (image/video and text) at the real head width, with few heads and few blocks, so that "
        "a step takes about a second on a CPU. What the ratios carry over to the real models: NAG's extra work "
        "is the negative text's tokens through every text path and the image queries' attention to them, plus "
        "elementwise work per image token; at a width of 256 instead of 2–6 k, attention (tokens² × width) "
        "weighs more against the projections and MLPs (tokens × width²) than in the real models, and a GPU "
        "weighs them differently again. Read them as the cost at these token counts, not as a GPU prediction.",
        "",
        *_tables(
            rows,
            "What was built (the tiny pipeline's text encoders stay; only their output width differs from the "
            "real models', and their time is not measured):",
        ),
    ]


def _tiny(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        "## Denoiser step on the tiny test pipelines",
        "",
        "The pipelines of `nag_guidance.testing` (the ones the integration tests use): every code path of every "
        "family runs, but at a few dozen tokens and widths of 8–64 per-call overheads dominate, so these ratios "
        "say little about real models. They are here to catch regressions.",
        "",
        *_tables(rows),
    ]


def _op(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return []
    lines = [
        "## The combine operator alone",
        "",
        "NAG(Z+, Z−) on one attention output, against one elementwise pass over the same tensors: "
        "`torch.add(z_pos, z_neg, out=buffer)` (read two, write one; the project's target is ≤ 1.3× of it). "
        "`add` is the same sum into a fresh tensor: on a CPU, a fresh output this large costs page faults that take "
        "longer than the pass itself, and so do the eager out-of-place operator's temporaries. In-place variants "
        "write into Z+ (restored before each call, untimed). Compiled: `torch.compile(fullgraph=True)`, timed "
        "after compiling. The pipelines use the eager in-place operator on fp32 activations (lower precisions are "
        "guided out of place in fp32 and copied back).",
        "",
    ]
    cuda = "bandwidth_gb_s" in entries[0]
    for entry in entries:
        lines += [
            f"Shape {tuple(entry['shape'])}, {entry['dtype']}, `{entry['device']}`:",
            "",
            "| variant | median ms | × pass |" + (" GB/s (least traffic) |" if cuda else ""),
            "|---|---|---|" + ("---|" if cuda else ""),
        ]
        for name, ms in entry["ms"].items():
            ratio = "1.00×" if name == "pass" else f"{entry['ratio_to_pass'][name]:.2f}×"
            bandwidth = f" {entry['bandwidth_gb_s'][name]:.0f} |" if cuda else ""
            lines.append(f"| {name} | {ms:.3g} | {ratio} |{bandwidth}")
        if cuda:
            lines.append(f"\nDevice-to-device copy: {entry['copy_bandwidth_gb_s']:.0f} GB/s.")
        lines.append("")
    return lines


def _gaps(result: dict[str, Any], tiny: list, realistic: list) -> list[str]:
    lines = []
    measured = {row["family"] for row in realistic}
    without = sorted({row["family"] for row in tiny} - measured)
    if realistic and without:
        lines.append(
            f"- No realistic shape for: {', '.join(without)} (tiny pipelines only). Building one per family is "
            "possible; they were left out to keep the full run under about 15 minutes on this 2-core machine."
        )
    for error in result["errors"]:
        lines.append(f"- **{error['kind']} {error['family']} failed**: `{error['error']}`")
    return ["## Gaps", "", *lines, ""] if lines else []


def _full_size(result: dict[str, Any]) -> list[str]:
    """The full-size section (report.py has none yet): targets, times, memory, what was built."""
    rows = [row for row in result["steps"] if row["kind"] == "full-size"]
    if not rows:
        return []
    lines = [
        "## Full-size denoisers, random weights" + (" (scaled down: --quick)" if result["quick"] else ""),
        "",
        (
            "The architectures scaled down (few blocks, few and narrow heads, small latents) to check the code "
            "path: these ratios say nothing about the real models. "
            if result["quick"]
            else "The real architectures at the real token counts. "
        )
        + f"Random weights, created on `{result['device']}` in {result['dtype']}; attention backend "
        f"`{result['attention_backend']}`; {result['settings']['steps']} steps per call, "
        f"{', '.join(sorted({str(row['repeats']) for row in rows}))} repeats. Target: NAG step / unguided step.",
        "",
        "| model | unguided step | NAG / unguided | target | met | NAG end 0.25 / unguided | CFG / unguided | "
        "peak memory: unguided → NAG → CFG |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        conditions, target = row["conditions"], row["target"]
        memory = " → ".join(f"{conditions[c]['peak_mib']:.0f}" for c in ("none", "nag", "cfg") if c in conditions)
        lines.append(
            f"| {row['family']} | {_step_time(conditions['none']['median_ms_per_step'])} | "
            f"{_ratio(conditions['nag'])} | ≤ {target['target']:.2f}× | {'yes' if target['met'] else 'no'} | "
            f"{_ratio(conditions.get('nag_end_0.25'))} | {_ratio(conditions.get('cfg'))} | {memory} MiB |"
        )
    return [*lines, "", *_tables(rows)]


def markdown(result: dict[str, Any]) -> str:
    """The page for a result as ``run`` builds it."""
    tiny = [row for row in result["steps"] if row["kind"] == "tiny"]
    realistic = [row for row in result["steps"] if row["kind"] == "realistic"]
    minutes = result["seconds"] / 60
    command = " ".join([*(f"{k}={v}" for k, v in result["machine"]["environment"].items()), result["command"]])
    lines = [
        "# Benchmarks: what NAG costs",
        "",
        f"Generated by `{command}` on {result['date'][:10]} in {minutes:.1f} minutes"
        + (_quick_note(result) if result["quick"] else "")
        + ". Numbers depend on the machine and its load (below): regenerate rather than compare across machines. "
        "Every repeat is in `benchmarks.json`, written with the page to the output folder (`--out`).",
        "",
        *_headline(realistic),
        *_full_size(result),
        *_machine(result),
        *_method(result),
        *_realistic(realistic),
        *_tiny(tiny),
        *_op(result["op"]),
        *_gaps(result, tiny, realistic),
    ]
    return "\n".join(lines).rstrip() + "\n"
