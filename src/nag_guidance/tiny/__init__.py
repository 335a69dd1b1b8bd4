"""The embedded few-step text-to-image model: procedural data, architecture, training recipe, weights, checker.

The loading API is re-exported here lazily, so ``import nag_guidance.tiny.data`` (or the checker) does not pay
for importing diffusers and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from nag_guidance.config import register_preset_rule

_LOADING_NAMES = (
    "DEFAULT_GUIDANCE",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_STEPS",
    "FLUX_MAX_SEQUENCE_LENGTH",
    "SequenceLengthWarning",
    "TEACHER_STEPS",
    "WeightsError",
    "embedded_model",
    "is_embedded",
    "load_feature_net",
    "load_pipeline",
    "load_teacher_unet",
    "load_wan_pipeline",
    "verify_weights",
    "wan_weights_path",
    "weights_path",
)

__all__ = list(_LOADING_NAMES)


def _embedded_preset(pipe: Any) -> str | None:
    """The embedded models get their own measured presets (``nag.apply`` asks this rule before the family's); one
    without a row of its own yet gets its ``FALLBACK_PRESETS`` entry."""
    from nag_guidance.config import PRESETS
    from nag_guidance.tiny.loading import FALLBACK_PRESETS, embedded_model

    name = embedded_model(pipe)
    return name if name is None or name in PRESETS else FALLBACK_PRESETS.get(name)


register_preset_rule(_embedded_preset)


def __getattr__(name: str) -> Any:
    if name in _LOADING_NAMES:
        return getattr(importlib.import_module("nag_guidance.tiny.loading"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
