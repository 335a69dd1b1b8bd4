"""One module per architecture family; ``FAMILIES`` lists them all.

The order is the one ``nag families`` prints (and ``detect`` tries). An explicit list, rather than modules that
register themselves on import, keeps the family modules free of shared mutable state.
"""

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
from nag_guidance.integration.registry import Family

FAMILIES: tuple[Family, ...] = (
    flux.FLUX,
    flux.FLUX_KONTEXT,
    chroma.CHROMA,
    cogvideox.COGVIDEOX,
    flux2.FLUX2,
    hidream.HIDREAM,
    hunyuan_video.HUNYUAN_VIDEO,
    ltx.LTX,
    ltx.LTX2,
    lumina2.LUMINA2,
    pixart.PIXART,
    pixart.SANA,
    qwen_image.QWEN_IMAGE,
    sd3.SD3,
    stable_diffusion.SD,
    stable_diffusion.SDXL,
    wan.WAN,
    z_image.Z_IMAGE,
)

__all__ = ["FAMILIES"]
