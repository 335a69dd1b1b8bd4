"""Which of the installed diffusers' text pipelines NAG guides, refuses (and why), or does not know yet.

Read from the pipeline classes themselves (no instance is built): a pipeline is guided when a family lists it,
or when every denoiser class its ``__init__`` annotates is one a family guides (SD vs SDXL told apart by the
components it takes); refused when ``families.pipelines.REFUSED`` names it. A newer diffusers shows at once what
is new: its pipelines appear here as "not yet" until a family, or a refusal, covers them.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from nag_guidance.integration.families import FAMILIES
from nag_guidance.integration.families.pipelines import refusal_of
from nag_guidance.integration.family import Family


@dataclass(frozen=True)
class Coverage:
    """One pipeline class: ``status`` "guided" (``family`` set), "refused" or "not yet" (``reason`` set)."""

    pipeline: str
    status: str
    family: str | None = None
    reason: str = ""


@functools.cache
def text_pipelines() -> tuple[type, ...]:
    """The installed diffusers pipeline classes whose ``__call__`` takes a ``prompt``, by name (read once: it
    imports every pipeline module)."""
    import diffusers

    classes = []
    for name in sorted(set(getattr(diffusers, "_import_structure", {}).get("pipelines", []))):  # some twice
        if not name.endswith("Pipeline"):
            continue
        try:
            cls = getattr(diffusers, name)
        except (ImportError, AttributeError):  # a dummy object for a missing optional backend
            continue
        if inspect.isclass(cls) and any(_is_prompt(p) for p in inspect.signature(cls.__call__).parameters):
            classes.append(cls)
    return tuple(classes)


def _is_prompt(parameter: str) -> bool:
    """``prompt``, or VisualCloze's prompts (``task_prompt`` / ``content_prompt``)."""
    return parameter in ("prompt", "task_prompt", "content_prompt")


def _class_names(annotation: Any) -> list[str]:
    """The class names in an ``__init__`` annotation (a class, a union, or its text under postponed annotations),
    without None."""
    if isinstance(annotation, str):
        names = [n.rsplit(".", 1)[-1] for n in re.findall(r"[A-Za-z_][\w.]*", annotation)]
    elif typing.get_args(annotation):
        names = [n for arg in typing.get_args(annotation) for n in _class_names(arg)]
    else:
        names = [getattr(annotation, "__name__", "")]
    return [n for n in names if n not in ("", "None", "NoneType", "Optional", "Union")]


def _annotated_denoisers(cls: type, family: Family) -> list[str] | None:
    """The class names annotated on ``cls.__init__``'s first denoiser argument of ``family`` (None: it takes
    none of them)."""
    parameters = inspect.signature(cls.__init__).parameters
    for attr in family.denoisers:
        if attr in parameters:
            annotation = parameters[attr].annotation
            return [] if annotation is parameters[attr].empty else _class_names(annotation)
    return None


def _family_by_denoiser(cls: type) -> Family | None:
    components = SimpleNamespace(components=dict.fromkeys(inspect.signature(cls.__init__).parameters))
    for family in FAMILIES:
        names = _annotated_denoisers(cls, family)
        if not names or not family.denoiser_classes:
            continue
        if all(n in family.denoiser_classes for n in names) and (family.accepts is None or family.accepts(components)):
            return family
    return None


def coverage_of(cls: type) -> Coverage:
    """Where NAG stands on the pipeline class ``cls`` (see the module docstring)."""
    name = cls.__name__
    refusal = refusal_of(cls)
    if refusal is not None:
        return Coverage(name, "refused", reason=refusal)
    for family in FAMILIES:
        if any(c.__name__ in family.pipelines for c in cls.__mro__):
            return Coverage(name, "guided", family.name)
    family = _family_by_denoiser(cls)
    if family is not None:
        return Coverage(name, "guided", family.name)
    return Coverage(name, "not yet", reason="no family guides its denoiser yet")


def coverage() -> list[Coverage]:
    """Every installed text pipeline's coverage, by pipeline name."""
    return [coverage_of(cls) for cls in text_pipelines()]


def supported_pipelines() -> dict[str, tuple[str, ...]]:
    """Family name -> the installed pipeline classes it guides: the ones tested on it first (``Family.pipelines``),
    then the others around its denoiser. ``nag families``, the README's family table and docs/coverage.md all
    read this."""
    found: dict[str, list[str]] = {family.name: list(family.pipelines) for family in FAMILIES}
    for entry in coverage():
        if entry.status == "guided" and entry.pipeline not in found[entry.family]:
            found[entry.family].append(entry.pipeline)
    return {name: tuple(pipelines) for name, pipelines in found.items()}


def pipelines_cell(family: Family) -> str:
    """The README family table's pipelines cell of ``family``."""
    tested = ", ".join(f"`{name}`" for name in family.pipelines)
    more = len(supported_pipelines()[family.name]) - len(family.pipelines)
    return f"{tested} + {more} more around its denoiser" if more else tested


def coverage_markdown(tested: set[str]) -> str:
    """docs/coverage.md: the counts, then one row per installed text pipeline (``tested``: the pipeline classes
    the test catalogues build and run with NAG on)."""
    import diffusers

    entries = coverage()
    counts = {s: sum(e.status == s for e in entries) for s in ("guided", "refused", "not yet")}
    ran = sum(e.status == "guided" and e.pipeline in tested for e in entries)
    lines = [
        "# Pipeline coverage",
        "",
        f"Generated by `tests/integration/test_coverage_doc.py` from the installed diffusers {diffusers.__version__}"
        " (regenerate: `NAG_WRITE_COVERAGE=1 pytest tests/integration/test_coverage_doc.py`).",
        "",
        f"Of the {len(entries)} diffusers pipeline classes whose `__call__` takes a `prompt`: **{counts['guided']} "
        f"guided** ({ran} of them built tiny and run with NAG on by the test catalogues of `tests/integration`, "
        "the others matched by their class or denoiser only), "
        f"**{counts['refused']} refused** with a reason (`NotImplementedError`), **{counts['not yet']} not yet** "
        "(no family guides their denoiser: `NotImplementedError` naming it).",
        "",
        "| pipeline | status | family | tested | reason |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        mark = "yes" if e.pipeline in tested else ""
        lines.append(f"| `{e.pipeline}` | {e.status} | {e.family or ''} | {mark} | {e.reason} |")
    return "\n".join(lines) + "\n"
