"""One module per architecture family; importing this package registers them all."""

from nag_guidance.integration.families import (
    chroma,
    flux,
    flux2,
    hunyuan_video,
    ltx,
    pixart,
    qwen_image,
    sd3,
    stable_diffusion,
    wan,
    z_image,
)

__all__ = [
    "chroma",
    "flux",
    "flux2",
    "hunyuan_video",
    "ltx",
    "pixart",
    "qwen_image",
    "sd3",
    "stable_diffusion",
    "wan",
    "z_image",
]
