"""Normalized Attention Guidance (NAG) for stock Hugging Face diffusers pipelines.

>>> import nag_guidance as nag
>>> nag.apply(pipe)
>>> image = pipe(prompt, nag_negative_prompt="glasses", nag_scale=5).images[0]
>>> print(pipe.nag_report)
>>> nag.remove(pipe)
"""

from nag_guidance.config import PRESETS, NAGConfig, Preset, get_preset, register_preset_rule
from nag_guidance.functional import normalized_attention_guidance, normalized_attention_guidance_
from nag_guidance.integration import (
    NAGHandle,
    NAGReport,
    applied,
    apply,
    attach,
    defaults,
    is_applied,
    remove,
    supported_pipelines,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``NormalizedAttentionGuidance`` (the modular-pipeline guider) imports ``diffusers.guiders``, which takes
    seconds: it is loaded on first access only, so ``import nag_guidance`` stays light."""
    if name == "NormalizedAttentionGuidance":
        from nag_guidance.guider import NormalizedAttentionGuidance

        return NormalizedAttentionGuidance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "NAGConfig",
    "NAGHandle",
    "NAGReport",
    "NormalizedAttentionGuidance",
    "Preset",
    "__version__",
    "applied",
    "apply",
    "attach",
    "defaults",
    "get_preset",
    "is_applied",
    "normalized_attention_guidance",
    "normalized_attention_guidance_",
    "register_preset_rule",
    "remove",
    "supported_pipelines",
]
