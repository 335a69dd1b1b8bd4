"""Chroma: Flux-architecture blocks (same processors) without a pooled CLIP vector, with a padding mask over the
joint [text; image] sequence. The pipeline runs CFG as two transformer calls without a cache context; the
unconditional one is recognised by its text input (the pipeline's own negative embeddings)."""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration.denoiser_hooks import joined_mask
from nag_guidance.integration.families.flux import extend_text_ids
from nag_guidance.integration.family import Family, JointLayout
from nag_guidance.integration.state import ForwardPlan, NegativeText


def extend_inputs(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    """Text ids as Flux; the joint mask [prompt text | image] becomes [prompt text | negative text | image]."""
    extend_text_ids(arguments, plan, negative)
    mask = arguments.get("attention_mask")
    if mask is None and negative.mask is None:
        return
    batch, images = plan.batch, arguments["hidden_states"].shape[1]
    text_mask = None if mask is None else mask[:, : plan.text_length]
    image_mask = (
        torch.ones(batch, images, dtype=negative.mask.dtype, device=negative.mask.device)
        if mask is None
        else mask[:, plan.text_length :]
    )
    repeat = batch // negative.embeds.shape[0]
    text_mask = joined_mask(text_mask, negative.mask, (batch, plan.text_length), negative.embeds.shape[:2], repeat)
    arguments["attention_mask"] = torch.cat([text_mask, image_mask.to(text_mask.dtype)], dim=1)


CHROMA = Family(
    name="chroma",
    denoiser_classes=("ChromaTransformer2DModel",),
    timestep_units="fraction",
    text_width=("joint_attention_dim",),
    pipelines=("ChromaPipeline", "ChromaImg2ImgPipeline"),
    mechanism="joint",
    preset="chroma",
    encode_returns=("embeds", "ids", "mask", "uncond", "uncond_ids", "uncond_mask"),
    mask_arg=None,
    masks_negative=True,
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
    extend_inputs=extend_inputs,
)
