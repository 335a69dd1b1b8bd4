"""One module per architecture family; ``FAMILIES`` lists them all, and ``detect`` finds a pipeline's.

The order is the one ``nag families`` prints (and ``detect`` tries). An explicit list, rather than modules that
register themselves on import, keeps the family modules free of shared mutable state.

A pipeline is matched to a family by its class first (the pipelines tested on each family), else by its
denoiser: the class of the module it holds under one of the family's denoiser attributes (and the family's
``accepts``, for families that share a denoiser class). So a ControlNet, PAG, Fill or img2img variant built
around a guided denoiser is guided too. A pipeline refused by name (``pipelines.REFUSED``) is refused with its
reason before either match.
"""

from __future__ import annotations

from typing import Any

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
from nag_guidance.integration.families.pipelines import refusal_of
from nag_guidance.integration.family import Family

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


def registered_families() -> dict[str, Family]:
    """All families by name, in the order of ``FAMILIES``."""
    known = {family.name: family for family in FAMILIES}
    if len(known) != len(FAMILIES):
        raise ValueError("two families in FAMILIES have the same name")
    return known


def family_named(name: str) -> Family:
    """The family called ``name``; ``ValueError`` listing the known ones otherwise."""
    families = registered_families()
    if name not in families:
        raise ValueError(f"unknown family {name!r}; known families: {', '.join(families)}")
    return families[name]


def denoiser_of(pipe: Any, family: Family) -> tuple[str, Any] | None:
    """(attribute, module) of the first denoiser of ``family``'s classes that ``pipe`` holds (a compiled wrapper
    counts as the module inside), or None."""
    for attr in family.denoisers:
        model = getattr(pipe, attr, None)
        inner = getattr(model, "_orig_mod", model)
        if inner is not None and any(cls.__name__ in family.denoiser_classes for cls in type(inner).__mro__):
            return attr, model
    return None


def detect(pipe: Any) -> Family:
    """The family of a pipeline instance: by its class and base classes (so subclasses work), else by its denoiser
    (see the module docstring). Raises ``NotImplementedError`` naming the class and why (a refused pipeline's
    reason, else what is supported)."""
    refusal = refusal_of(type(pipe))
    if refusal is not None:
        raise NotImplementedError(f"NAG does not support {type(pipe).__name__}: {refusal}")
    for cls in type(pipe).__mro__:
        for family in FAMILIES:
            if cls.__name__ in family.pipelines:
                return family
    for family in FAMILIES:
        if denoiser_of(pipe, family) is not None and (family.accepts is None or family.accepts(pipe)):
            return family
    guided = sorted({name for family in FAMILIES for name in family.denoiser_classes})
    held = sorted({type(getattr(pipe, a)).__name__ for a in ("unet", "transformer", "prior") if hasattr(pipe, a)})
    holds = f"its denoiser ({', '.join(held)}) is" if held else "it holds no denoiser that is"
    raise NotImplementedError(
        f"NAG does not support {type(pipe).__name__}: {holds} none of the classes NAG guides "
        f"({', '.join(guided)}); see `nag families`"
    )


__all__ = ["FAMILIES", "denoiser_of", "detect", "family_named", "registered_families"]
