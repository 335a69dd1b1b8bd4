"""Normalized Attention Guidance (NAG) for stock Hugging Face diffusers pipelines."""

from nag_guidance.config import PRESETS, NAGConfig, Preset, get_preset, preset_for_family
from nag_guidance.functional import normalized_attention_guidance, normalized_attention_guidance_

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "NAGConfig",
    "Preset",
    "__version__",
    "get_preset",
    "normalized_attention_guidance",
    "normalized_attention_guidance_",
    "preset_for_family",
]
