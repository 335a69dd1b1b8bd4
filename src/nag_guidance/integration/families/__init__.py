"""One module per architecture family; importing this package registers them all."""

from nag_guidance.integration.families import (
    chroma,
    cogvideox,
    flux,
    flux2,
    hidream,
    hunyuan_video,
    ltx,
    lumina2,
    pixart,
    qwen_image,
    sd3,
    stable_diffusion,
    wan,
    z_image,
)

__all__ = [
    "chroma",
    "cogvideox",
    "flux",
    "flux2",
    "hidream",
    "hunyuan_video",
    "ltx",
    "lumina2",
    "pixart",
    "qwen_image",
    "sd3",
    "stable_diffusion",
    "wan",
    "z_image",
]
