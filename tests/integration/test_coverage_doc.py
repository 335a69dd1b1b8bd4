"""docs/coverage.md is the installed diffusers' text pipelines as NAG stands on them (builds each family case's
tiny pipeline once, to read its class; runs none).

Regenerate with ``NAG_WRITE_COVERAGE=1``; a newer diffusers fails this test until the page shows its pipelines.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import diffusers
import pytest

from nag_guidance.integration.coverage import coverage, coverage_markdown
from nag_guidance.integration.families import detect
from tests.integration.cases import CASES
from tests.integration.joint_cases import JOINT_CASES
from tests.integration.variant_cases import VARIANTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "coverage.md"


@functools.cache
def tested() -> set[str]:
    """The pipeline classes the contract and smoke catalogues run with NAG on (the families' cases are built to
    read their class: a family's ``pipelines`` list is what it is matched by, not what a test runs)."""
    cases = [case.make for case in CASES] + [case.make for case in JOINT_CASES]
    return {v.pipeline for v in VARIANTS} | {type(make()).__name__ for make in cases}


def test_coverage_page_is_current() -> None:
    page = coverage_markdown(tested())
    if os.environ.get("NAG_WRITE_COVERAGE"):
        DOC.write_text(page, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == page, "docs/coverage.md is stale: NAG_WRITE_COVERAGE=1 pytest " + __file__


def test_every_tested_pipeline_is_listed_as_guided() -> None:
    status = {entry.pipeline: entry for entry in coverage()}
    assert {name for name in tested() if status[name].status != "guided"} == set()
    assert {v.pipeline: status[v.pipeline].family for v in VARIANTS} == {v.pipeline: v.family for v in VARIANTS}


@pytest.mark.parametrize("entry", [e for e in coverage() if e.status == "refused"], ids=lambda e: e.pipeline)
def test_refused_pipelines_raise_their_reason(entry) -> None:
    pipe = object.__new__(getattr(diffusers, entry.pipeline))  # detection reads the class first: nothing built
    with pytest.raises(NotImplementedError, match=re.escape(entry.reason)):
        detect(pipe)
