"""HunyuanVideo: dual- then single-stream blocks over [video; text], after a text "token refiner".

Two parts of the model must not see the prompt's and the negative's tokens together: the token refiner (it
pools the text into its own timestep embedding and lets text tokens attend to each other) and the joint
padding mask (built assuming the valid text tokens are a prefix). So the refiner is run on the negative
separately (a hook on ``context_embedder``), and the guided attention gets the two text masks directly.
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration import joint_attention
from nag_guidance.integration.joint_attention import JointLayout
from nag_guidance.integration.registry import Family, Undo
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
    plan.extras["text_key_masks"] = (mask, negative_mask)


def install(pipe: Any, family: Family, state: NAGState) -> list[Undo]:
    undo = joint_attention.install(pipe, family, state)
    refiner = pipe.transformer.context_embedder
    busy = []

    def strip_negative(module: torch.nn.Module, args: tuple, kwargs: dict):
        plan = state.forward
        if plan is None or busy:
            return None
        hidden, timestep, *rest = args
        plan.extras["negative_text"] = (hidden[:, plan.text_length :], timestep)
        return (hidden[:, : plan.text_length], timestep, *rest), kwargs

    def refine_negative(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        plan = state.forward
        if plan is None or busy:
            return None
        negative, timestep = plan.extras.pop("negative_text")
        busy.append(True)
        try:
            refined = module(negative, timestep, plan.extras["text_key_masks"][1])
        finally:
            busy.clear()
        return torch.cat([output, refined], dim=1)

    handles = [
        refiner.register_forward_pre_hook(strip_negative, with_kwargs=True),
        refiner.register_forward_hook(refine_negative, with_kwargs=True),
    ]
    return [*undo, *(h.remove for h in handles)]


HUNYUAN_VIDEO = Family(
    name="hunyuan-video",
    text_width="text_embed_dim",
    pipelines=("HunyuanVideoPipeline",),
    install=install,
    preset="hunyuan-video",
    encode_returns=("embeds", "pooled", "mask"),
    mask_arg=None,
    cfg_argument="true_cfg_scale",
    attention=("transformer_blocks.*.attn", "single_transformer_blocks.*.attn"),  # not the token refiner
    layout=JointLayout("dispatch", text_first=False),
    extend_inputs=extend_inputs,
)
