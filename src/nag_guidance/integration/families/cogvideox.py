"""CogVideoX (text-, image-, video-to-video, Fun-Control): expert-adaLN blocks whose one attention layer (``attn1``)
runs over [text; video], concatenated inside the processor; the feed-forward also runs on the concatenation.

The text enters through ``patch_embed``, which projects it and adds a joint positional table sized for exactly
``max_text_seq_length`` text tokens (zero rows there for the sin-cos models, learned rows for CogVideoX-5B-I2V), so
the prompt's and the negative's tokens together do not fit. A hook there embeds the prompt as stock and the negative
as it would be embedded alone, by the same module: padded to the prompt's length, the padding cut off again (it is
never attended). A negative longer than the model's text length, which the stock model cannot take at all, is refused.
RoPE (5B, 1.5) rotates the video tokens only. The pipelines batch CFG as [uncond, cond] in one call, and always make
one video per prompt (they override ``num_videos_per_prompt``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nag_guidance.integration.denoiser_hooks import NegativeAlone, text_tail
from nag_guidance.integration.family import Family, JointLayout, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    return NegativeAlone(model.patch_embed, state, text_tail("text_embeds"), _embed_negative).undo


def _embed_negative(
    module: torch.nn.Module, plan: ForwardPlan, arguments: dict[str, Any], negative: torch.Tensor, output: torch.Tensor
) -> torch.Tensor:
    """Insert the negative's tokens, embedded as they would be alone, after the prompt's."""
    prompt, length = plan.text_length, negative.shape[1]
    if length > prompt:
        if module.use_positional_embeddings or module.use_learned_positional_embeddings:
            raise ValueError(
                f"the NAG negative has {length} text tokens, more than the prompt's {prompt}: CogVideoX's "
                "positional table is sized for its fixed text length, so such a text cannot be embedded. Encode "
                "the negative with the prompt's max_sequence_length"
            )
        padded = negative
    else:
        padded = F.pad(negative, (0, 0, 0, prompt - length))
    embedded = module(padded, arguments["image_embeds"])
    return torch.cat([output[:, :prompt], embedded[:, :length], output[:, prompt:]], dim=1)


COGVIDEOX = Family(
    name="cogvideox",
    denoiser_classes=("CogVideoXTransformer3DModel",),
    text_width=("text_embed_dim",),
    pipelines=(
        "CogVideoXPipeline",
        "CogVideoXImageToVideoPipeline",
        "CogVideoXVideoToVideoPipeline",
        "CogVideoXFunControlPipeline",
    ),
    mechanism="joint",
    module_hooks=module_hooks,
    preset="generic",
    encode_returns=("embeds", "uncond"),
    mask_arg=None,
    attention=("attn1",),
    layout=JointLayout("sdpa", text_first=True),
)
