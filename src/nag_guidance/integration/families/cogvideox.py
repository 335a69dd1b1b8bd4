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

from nag_guidance.integration import joint_attention
from nag_guidance.integration.hooks import bind_forward, unbind
from nag_guidance.integration.joint_attention import JointLayout
from nag_guidance.integration.registry import Family, Undo
from nag_guidance.integration.state import NAGState


def install(pipe: Any, family: Family, state: NAGState) -> list[Undo]:
    undo = joint_attention.install(pipe, family, state)
    embed = pipe.transformer.patch_embed
    busy: list[bool] = []

    def strip_negative(module: torch.nn.Module, args: tuple, kwargs: dict):
        """Embed only the prompt's text with the video; keep the negative's aside."""
        plan = state.forward
        if plan is None or busy:
            return None
        bound = bind_forward(module, args, kwargs)
        text = bound.arguments["text_embeds"]
        plan.extras["negative_text"] = text[:, plan.text_length :]
        bound.arguments["text_embeds"] = text[:, : plan.text_length]
        return unbind(bound)

    def embed_negative(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor):
        """Insert the negative's tokens, embedded as they would be alone, after the prompt's."""
        plan = state.forward
        if plan is None or busy or "negative_text" not in plan.extras:
            return None
        negative = plan.extras.pop("negative_text")
        bound = bind_forward(module, args, kwargs)
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
        busy.append(True)
        try:
            embedded = module(padded, bound.arguments["image_embeds"])
        finally:
            busy.clear()
        return torch.cat([output[:, :prompt], embedded[:, :length], output[:, prompt:]], dim=1)

    handles = [
        embed.register_forward_pre_hook(strip_negative, with_kwargs=True),
        embed.register_forward_hook(embed_negative, with_kwargs=True),
    ]
    return [*undo, *(handle.remove for handle in handles)]


COGVIDEOX = Family(
    name="cogvideox",
    text_width="text_embed_dim",
    pipelines=(
        "CogVideoXPipeline",
        "CogVideoXImageToVideoPipeline",
        "CogVideoXVideoToVideoPipeline",
        "CogVideoXFunControlPipeline",
    ),
    install=install,
    preset="generic",
    encode_returns=("embeds", "uncond"),
    mask_arg=None,
    attention=("attn1",),
    layout=JointLayout("sdpa", text_first=True),
)
