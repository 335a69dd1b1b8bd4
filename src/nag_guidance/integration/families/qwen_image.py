"""Qwen-Image and Qwen-Image-Edit: dual-stream MMDiT with a text padding mask and text RoPE.

Text rotary positions start after the largest image position and run along the text, so the model, seeing the
prompt's and the negative's tokens one after the other, would give the negative positions that continue the
prompt's. A hook on ``pos_embed`` restarts them: the negative's tokens get the positions it would have alone.
The Edit pipelines encode the negative with the input image, as they encode their own CFG negative.
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration.family import Family, JointLayout, Undo
from nag_guidance.integration.state import NAGState


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    return [model.pos_embed.register_forward_hook(_restart_negative_positions(state)).remove]


def _restart_negative_positions(state: NAGState):
    def post_forward(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        plan = state.forward
        if plan is None or not isinstance(output, tuple) or len(output) != 2:
            return None
        image_freqs, text_freqs = output
        prompt, negative = plan.text_length, plan.negative_length
        if text_freqs.shape[0] != prompt + negative:
            return None
        return image_freqs, torch.cat([text_freqs[:prompt], text_freqs[:negative]], dim=0)

    return post_forward


QWEN_IMAGE = Family(
    name="qwen-image",
    denoiser_classes=("QwenImageTransformer2DModel",),
    timestep_units="fraction",
    text_width=("joint_attention_dim",),
    pipelines=(
        "QwenImagePipeline",
        "QwenImageImg2ImgPipeline",
        "QwenImageInpaintPipeline",
        "QwenImageEditPipeline",
        "QwenImageEditPlusPipeline",
        "QwenImageEditInpaintPipeline",
    ),
    mechanism="joint",
    module_hooks=module_hooks,
    preset="generic",
    encode_returns=("embeds", "mask"),
    mask_arg="encoder_hidden_states_mask",
    cfg_argument="true_cfg_scale",
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
)
