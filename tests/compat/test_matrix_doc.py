"""docs/compatibility.md lists exactly the current compat cells (cheap: reads the test modules' marks, runs none)."""

from __future__ import annotations

import pytest

from tests.compat.matrix import COMMAND, DOC, declared_cells, parse


def test_compatibility_page_lists_exactly_the_current_cells(pytestconfig: pytest.Config) -> None:
    if pytestconfig.getoption("--compat-doc", default=None):
        pytest.skip("this run rewrites the page")
    listed = parse(DOC.read_text())
    declared = declared_cells()
    assert declared, "no compat cell found"
    assert declared <= listed, f"cells missing from {DOC.name} (regenerate: {COMMAND}): {sorted(declared - listed)}"
    assert listed <= declared, f"rows of {DOC.name} without a cell (regenerate: {COMMAND}): {sorted(listed - declared)}"
