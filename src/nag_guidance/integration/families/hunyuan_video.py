"""HunyuanVideo: dual- then single-stream blocks over [video; text], after a text "token refiner".

Two parts of the model must not see the prompt's and the negative's tokens together: the token refiner (it
pools the text into its own timestep embedding and lets text tokens attend to each other) and the joint
padding mask (built assuming the valid text tokens are a prefix). So the refiner is run on the negative
separately (a hook on ``context_embedder``), and the guided attention gets the two text masks directly.
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration.denoiser_hooks import NegativeAlone, text_tail
from nag_guidance.integration.family import Family, JointLayout, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState, NegativeText


def extend_inputs(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    """Keep the prompt's mask for the model; hand both text masks to the guided attention."""
    mask = arguments["encoder_attention_mask"]
    repeat = plan.batch // negative.embeds.shape[0]
    negative_mask = (
        torch.ones(negative.embeds.shape[:2], dtype=mask.dtype, device=mask.device)
        if negative.mask is None
        else negative.mask.to(mask.device, mask.dtype)
    ).repeat(repeat, 1)
    plan.text_key_masks = (mask, negative_mask)


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    return NegativeAlone(model.context_embedder, state, text_tail("hidden_states"), _refine_negative).undo


def _refine_negative(
    module: torch.nn.Module, plan: ForwardPlan, arguments: dict[str, Any], negative: torch.Tensor, output: torch.Tensor
) -> torch.Tensor:
    """Append the negative's tokens, refined alone with its own mask."""
    return torch.cat([output, module(negative, arguments["timestep"], plan.text_key_masks[1])], dim=1)


HUNYUAN_VIDEO = Family(
    name="hunyuan-video",
    denoiser_classes=("HunyuanVideoTransformer3DModel",),
    text_width=("text_embed_dim",),
    pipelines=("HunyuanVideoPipeline",),
    mechanism="joint",
    module_hooks=module_hooks,
    preset="hunyuan-video",
    encode_returns=("embeds", "pooled", "mask"),
    mask_arg=None,
    masks_negative=True,
    cfg_argument="true_cfg_scale",
    attention=("transformer_blocks.*.attn", "single_transformer_blocks.*.attn"),  # not the token refiner
    layout=JointLayout("dispatch", text_first=False),
    extend_inputs=extend_inputs,
    pooled_arg="pooled_projections",
)
