"""The compatibility matrix page: which tests are its cells, how their results become docs/compatibility.md, and
how the page is read back (by tests/compat/test_matrix_doc.py, to check that it lists exactly the current cells).

A cell is a test carrying ``@pytest.mark.compat(area, feature, verdict)`` on the function, its class or its module
(``pytestmark``), in one of the files of ``DOC_PATHS``. Its family comes from the ``case`` (or ``case_id``)
parameter; its "What is checked" text is the first paragraph of its docstring (the first sentence of its module's
docstring when it has none). A test module may set ``COMPAT_NOTE = "..."``: that paragraph is printed under the
heading of its area.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "compatibility.md"
# The selection that makes the page: every file of tests/compat, and the compile and attention-backend tests.
DOC_PATHS = ("tests/compat", "tests/integration/test_compile.py", "tests/integration/test_attention_backends.py")
COMMAND = f"python -m pytest {' '.join(DOC_PATHS)} --compat-doc docs/compatibility.md"
VERDICTS = {
    "equal": "NAG's output with the feature equals its reference (the tolerance is in the test) and NAG is active.",
    "kept": "NAG stays active and acts, but there is no exact reference (e.g. a cache reusing earlier steps): "
    "the check says what is asserted.",
    "refused": "NAG does not run with the feature and says so: a clear error, or a warning with NAG inactive and a "
    "note in `nag_report`.",
}
COLUMNS = ("Operation", "Families", "Verdict", "Result", "What is checked")


def doc_files() -> list[Path]:
    """The test files whose cells make the page, in collection order."""
    files: list[Path] = []
    for entry in DOC_PATHS:
        path = ROOT / entry
        files.extend(sorted(path.glob("test_*.py")) if path.is_dir() else [path])
    return files


def checks_text(function: object, module_doc: str | None) -> str:
    """The first paragraph of the test's docstring, else the first sentence of its module's docstring."""
    doc = (getattr(function, "__doc__", None) or "").strip()
    if doc:
        return " ".join(doc.split("\n\n")[0].split())
    text = " ".join((module_doc or "").split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


@dataclass
class Row:
    """One row of the page: the cells sharing area, feature, verdict and check, over their families."""

    area: str
    feature: str
    verdict: str
    checks: str
    families: list[str] = field(default_factory=list)
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (passed/failed/skipped/xfailed, reason)

    def result(self) -> str:
        failed = sum(outcome == "failed" for outcome, _ in self.outcomes)
        passed = sum(outcome == "passed" for outcome, _ in self.outcomes)
        reasons: dict[tuple[str, str], int] = {}  # (skipped/xfailed, reason) -> count
        for outcome, reason in self.outcomes:
            if outcome in ("skipped", "xfailed"):
                reasons[outcome, reason] = reasons.get((outcome, reason), 0) + 1
        parts = [f"FAILED ({failed} of {len(self.outcomes)})"] if failed else []
        parts += [f"passed ({passed})"] if passed else []
        for (outcome, reason), count in reasons.items():
            label = "skipped" if outcome == "skipped" else "expected failure"
            parts.append(f"{label} ({count}): {reason}" if len(reasons) > 1 or passed else f"{label}: {reason}")
        return "; ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(rows: Iterable[Row], versions: dict[str, str], notes: dict[str, str]) -> str:
    """The page: header, verdict legend, then one table per area (areas and rows in collection order)."""
    by_area: dict[str, list[Row]] = {}
    for row in rows:
        by_area.setdefault(row.area, []).append(row)
    lines = [
        "# Compatibility with diffusers features",
        "",
        "Generated from the tests, do not edit by hand: every row is one or more tests marked "
        "`@pytest.mark.compat(area, feature, verdict)`, run on the tiny random pipelines of the test suite (CPU). "
        "Regenerate with",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        "(the page is only written by a run of that whole selection). Versions: "
        + ", ".join(f"{name} {version}" for name, version in versions.items())
        + ".",
        "",
        "Verdicts:",
        "",
        *[f"- **{verdict}**: {meaning}" for verdict, meaning in VERDICTS.items()],
    ]
    for area, area_rows in by_area.items():
        lines += ["", f"## {area}", ""]
        if area in notes:
            lines += [" ".join(notes[area].split()), ""]
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in area_rows:
            families = ", ".join(row.families) or "-"
            cells = (row.feature, families, row.verdict, row.result(), row.checks)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def parse(text: str) -> set[tuple[str, str, str]]:
    """(area, feature, verdict) of every row of a rendered page."""
    found: set[tuple[str, str, str]] = set()
    area = None
    for line in text.splitlines():
        if line.startswith("## "):
            area = line[3:].strip()
        elif area and line.startswith("| ") and not line.startswith(f"| {COLUMNS[0]} |"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            found.add((area, cells[0], cells[2]))
    return found


def declared_cells() -> set[tuple[str, str, str]]:
    """(area, feature, verdict) of every compat test in the files of the page, read from the marks of the
    imported modules (function, class and module marks)."""
    cells: set[tuple[str, str, str]] = set()
    for path in doc_files():
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        module_marks = list(getattr(module, "pytestmark", []))
        for name, obj in vars(module).items():
            if not name.startswith(("test", "Test")) or getattr(obj, "__module__", None) != module.__name__:
                continue
            owners = [(obj, [])]
            if isinstance(obj, type):
                class_marks = list(getattr(obj, "pytestmark", []))
                owners = [(method, class_marks) for n, method in vars(obj).items() if n.startswith("test")]
            for function, class_marks in owners:
                marks = [*getattr(function, "pytestmark", []), *class_marks, *module_marks]
                compat = next((m for m in marks if m.name == "compat"), None)
                if compat is not None:
                    cells.add(tuple(compat.args))
    return cells
