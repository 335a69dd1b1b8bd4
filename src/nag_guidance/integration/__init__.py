"""NAG on stock diffusers pipelines: ``apply``/``remove``, the per-family adapters and the report."""

from nag_guidance.integration.coverage import supported_pipelines
from nag_guidance.integration.families import detect, registered_families
from nag_guidance.integration.family import Family
from nag_guidance.integration.handle import NAGHandle, attach
from nag_guidance.integration.pipeline import (
    NAG_CALL_ARGUMENTS,
    applied,
    apply,
    default_preset,
    defaults,
    is_applied,
    remove,
    stock_class,
)
from nag_guidance.integration.report import NAGReport

__all__ = [
    "NAG_CALL_ARGUMENTS",
    "Family",
    "NAGHandle",
    "NAGReport",
    "applied",
    "apply",
    "attach",
    "default_preset",
    "defaults",
    "detect",
    "is_applied",
    "registered_families",
    "remove",
    "stock_class",
    "supported_pipelines",
]
