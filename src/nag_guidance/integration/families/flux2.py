"""FLUX.2 (dev, Klein): dual-stream then single-stream blocks ([text; image]); the single blocks' output
projection takes [attention; MLP], and NAG acts on the attention part before it.

FLUX.2 text tokens carry 4-D position ids (t, h, w, l) with l counting along the text, so the negative's tokens
get the ids they would have alone: the prompt's first id, with l restarting at 0.
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration.family import Family, JointLayout
from nag_guidance.integration.state import ForwardPlan, NegativeText


def extend_text_ids(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    ids = arguments["txt_ids"]  # (B, L, 4) or (L, 4)
    first = ids[..., :1, :]
    extra = first.expand(*first.shape[:-2], plan.negative_length, ids.shape[-1]).clone()
    extra[..., -1] = torch.arange(plan.negative_length, device=ids.device, dtype=ids.dtype)
    arguments["txt_ids"] = torch.cat([ids, extra], dim=-2)


FLUX2 = Family(
    name="flux2",
    denoiser_classes=("Flux2Transformer2DModel",),
    timestep_units="fraction",
    text_width=("joint_attention_dim",),
    pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
    cfg_argument=None,  # FLUX.2-dev is guidance-distilled; Klein's CFG negative is always ""
    mechanism="joint",
    preset="generic",
    encode_returns=("embeds", "ids"),
    mask_arg=None,
    ulysses=True,
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
    extend_inputs=extend_text_ids,
)
