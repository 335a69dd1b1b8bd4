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
