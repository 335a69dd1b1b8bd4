"""NAG on stock diffusers pipelines: ``apply``/``remove``, the per-family adapters and the report."""

from nag_guidance.integration.pipeline import NAG_CALL_ARGUMENTS, applied, apply, is_applied, remove
from nag_guidance.integration.registry import Family, detect, registered_families, supported_pipelines
from nag_guidance.integration.report import NAGReport

__all__ = [
    "NAG_CALL_ARGUMENTS",
    "Family",
    "NAGReport",
    "applied",
    "apply",
    "detect",
    "is_applied",
    "registered_families",
    "remove",
    "supported_pipelines",
]
