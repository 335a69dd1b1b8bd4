"""Allegro (``AllegroTransformer3DModel``; ``AllegroPipeline``): PixArt-like blocks whose ``attn2`` attends to the
projected T5 text with its padding mask; CFG batched as [uncond, cond].

The pipeline hands the text over as (B, 1, L, D), which the model flattens to (B, L, ·) after its caption
projection. A pre-hook flattens it first (the projection is per token, so this is exactly stock) so that the
negative can be appended on the token axis like everywhere else.
"""

from __future__ import annotations

import torch

from nag_guidance.integration.denoiser_hooks import bind_forward, unbind
from nag_guidance.integration.family import Family, Undo
from nag_guidance.integration.state import NAGState


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    return [model.register_forward_pre_hook(_tokens_on_one_axis(state), with_kwargs=True, prepend=True).remove]


def _tokens_on_one_axis(state: NAGState):
    """Before NAG's own pre-hook, in NAG calls only: the text as (B, L, D)."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if state.call is None:
            return None
        bound = bind_forward(module, args, kwargs)
        text = bound.arguments.get("encoder_hidden_states")
        if not isinstance(text, torch.Tensor) or text.ndim != 4:
            return None
        bound.arguments["encoder_hidden_states"] = text.flatten(1, 2)
        return unbind(bound)

    return pre_forward


ALLEGRO = Family(
    name="allegro",
    denoiser_classes=("AllegroTransformer3DModel",),
    text_width=("caption_channels",),
    pipelines=("AllegroPipeline",),
    mechanism="cross",
    module_hooks=module_hooks,
    preset="generic",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)
