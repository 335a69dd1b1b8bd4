"""Build any diffusers pipeline class from a pool of tiny components, by the names of its ``__init__`` arguments.

Pipelines around one denoiser (SD's ControlNet, PAG, img2img ... variants) differ mostly in which of a few
components they take; building each from one pool keeps the per-pipeline fixtures to their call inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

_ABSENT = {"safety_checker", "feature_extractor", "image_encoder"}
"""Optional components the tests never need (left None where the pipeline allows it)."""


def assemble(cls: type, pool: Mapping[str, Callable[[], Any]], **given: Any) -> Any:
    """An instance of the pipeline class ``cls``: each ``__init__`` argument from ``given``, else built by the
    ``pool``'s factory of that name (so only the components a pipeline takes are built), else None for the
    optional components nobody needs. Progress bars off."""
    kwargs: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in given:
            kwargs[name] = given[name]
        elif name in pool:
            kwargs[name] = pool[name]()
        elif name in _ABSENT:
            kwargs[name] = None
        elif name == "requires_safety_checker":
            kwargs[name] = False
        elif parameter.default is parameter.empty:
            raise TypeError(f"{cls.__name__} takes {name}, which the pool does not hold")
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
