"""One module per architecture family; ``FAMILIES`` lists them all.

The order is the one ``nag families`` prints (and ``detect`` tries). An explicit list, rather than modules that
register themselves on import, keeps the family modules free of shared mutable state.
"""

from nag_guidance.integration.families import (
    allegro,
    chroma,
    chronoedit,
    cogvideox,
    flux,
    flux2,
    hidream,
    hunyuan_video,
    i2vgen_xl,
    latte,
    ltx,
    lumina2,
    pixart,
    qwen_image,
    sana_video,
    sd3,
    skyreels_v2,
    stable_diffusion,
    text_to_video_sd,
    wan,
    wan_animate,
    wan_vace,
    z_image,
)
from nag_guidance.integration.registry import Family

FAMILIES: tuple[Family, ...] = (  # the README's order: cross-attention, then joint, then the optional three
    stable_diffusion.SD,
    stable_diffusion.SDXL,
    pixart.PIXART,
    pixart.SANA,
    sana_video.SANA_VIDEO,
    text_to_video_sd.TEXT_TO_VIDEO_SD,
    i2vgen_xl.I2VGEN_XL,
    wan.WAN,
    wan_vace.WAN_VACE,
    wan_animate.WAN_ANIMATE,
    chronoedit.CHRONOEDIT,
    skyreels_v2.SKYREELS_V2,
    ltx.LTX,
    ltx.LTX2,
    allegro.ALLEGRO,
    latte.LATTE,
    sd3.SD3,
    flux.FLUX,
    flux.FLUX_KONTEXT,
    chroma.CHROMA,
    qwen_image.QWEN_IMAGE,
    hunyuan_video.HUNYUAN_VIDEO,
    flux2.FLUX2,
    z_image.Z_IMAGE,
    cogvideox.COGVIDEOX,
    lumina2.LUMINA2,
    hidream.HIDREAM,
)

__all__ = ["FAMILIES"]
