"""The README stays true: its set-up commands, its presets table and its runnable example."""

from __future__ import annotations

import re
from pathlib import Path

from nag_guidance.config import get_preset, presets_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    section = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    install, tests = bash_blocks(section)
    assert "pip install torch==2.13.0" in install and "nag generate" in install
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_presets_table_is_the_presets_module():
    assert presets_markdown() in README


def test_the_offline_example_runs(capsys):
    section = README.split("Runnable offline", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own example)
    assert namespace["image"].size == (32, 32)
    printed = capsys.readouterr().out
    tiny = get_preset("tiny").config  # the embedded model gets its own measured preset
    assert f"NAG (sd) scale={tiny.scale:g} tau={tiny.tau:g} alpha={tiny.alpha:g}" in printed and "4/4 steps" in printed


def test_family_table_pipelines_are_the_coverage_data():
    from nag_guidance.integration.coverage import pipelines_cell
    from nag_guidance.integration.families import FAMILIES

    section = README.split("### Supported families", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    cells = {row.split(" | ")[0].strip("| `"): row.split(" | ")[1] for row in rows}
    assert {family.name: cells.get(family.name) for family in FAMILIES} == {
        family.name: pipelines_cell(family) for family in FAMILIES
    }


def test_readme_states_the_coverage_counts():
    from nag_guidance.integration.coverage import coverage

    entries = coverage()
    count = {s: sum(e.status == s for e in entries) for s in ("guided", "refused", "not yet")}
    stated = (
        f"Of the {len(entries)}\npipeline classes of diffusers 0.42.1 that take a prompt, "
        f"{count['guided']} are guided, {count['refused']} refused with their reason and {count['not yet']} not\nyet"
    )
    assert stated in README
