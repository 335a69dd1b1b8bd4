"""The embedded few-step text-to-image model: procedural data, architecture, training recipe, weights, checker.

The loading API is re-exported here lazily, so ``import nag_guidance.tiny.data`` (or the checker) does not pay
for importing diffusers and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LOADING_NAMES = (
    "DEFAULT_GUIDANCE",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_STEPS",
    "TEACHER_STEPS",
    "WeightsError",
    "is_embedded",
    "load_feature_net",
    "load_pipeline",
    "load_teacher_unet",
    "verify_weights",
    "weights_path",
)

__all__ = list(_LOADING_NAMES)


def __getattr__(name: str) -> Any:
    if name in _LOADING_NAMES:
        return getattr(importlib.import_module("nag_guidance.tiny.loading"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
