"""Flux.1 (schnell, dev, Kontext): 19 dual-stream blocks ([text; image] joint attention) and 38 single-stream
blocks (text and image concatenated inside the block); NAG guides every one of them.

Flux gives every text token the position id (0, 0, 0), so the negative's tokens get the same ids whatever
its length. Kontext's reference-image tokens follow the image tokens in the sequence and count as image tokens.
The pooled CLIP vector of the negative rows' modulation is the prompt's (see ``joint_attention``).
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration import joint_attention
from nag_guidance.integration.joint_attention import JointLayout
from nag_guidance.integration.registry import Family
from nag_guidance.integration.state import ForwardPlan, NegativeText


def extend_text_ids(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    """The negative's text position ids: zeros, like the prompt's (2-D (L, 3) or the deprecated 3-D form)."""
    ids = arguments["txt_ids"]
    extra = ids.new_zeros(*ids.shape[:-2], plan.negative_length, ids.shape[-1])
    arguments["txt_ids"] = torch.cat([ids, extra], dim=-2)


def _flux_preset(pipe: Any) -> str:
    """Guidance-distilled (dev) or not (schnell), from the transformer's config; schnell without a transformer."""
    transformer = getattr(pipe, "transformer", None)
    return "flux-dev" if transformer is not None and transformer.config.get("guidance_embeds") else "flux-schnell"


FLUX = Family(
    name="flux",
    timestep_units="fraction",
    text_width="joint_attention_dim",
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    install=joint_attention.install,
    preset=_flux_preset,
    encode_returns=("embeds", "pooled", "ids"),
    mask_arg=None,
    cfg_argument="true_cfg_scale",
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
    extend_inputs=extend_text_ids,
)

FLUX_KONTEXT = Family(
    name="flux-kontext",
    timestep_units="fraction",
    text_width="joint_attention_dim",
    pipelines=("FluxKontextPipeline", "FluxKontextInpaintPipeline"),
    install=joint_attention.install,
    preset="flux-kontext",
    encode_returns=("embeds", "pooled", "ids"),
    mask_arg=None,
    cfg_argument="true_cfg_scale",
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
    extend_inputs=extend_text_ids,
)
