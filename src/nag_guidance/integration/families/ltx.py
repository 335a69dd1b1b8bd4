"""LTX-Video and LTX-2: ``attn2`` attends to the (projected) text with a padding mask.

LTX-2 modulates the text K/V per block from the timestep (``cross_attn_adaln``); the negative gets the same
modulation because it travels on the prompt's sequence axis. LTX-2's pipelines also run the encoded text
through ``pipe.connectors`` before the transformer: a hook there runs the negative through the connectors in
the same batch (extra rows), so it gets exactly the prompt's processing. Only the video stream's text
attention is guided; the audio stream and the audio/video cross-modal attention are not text attention of the
video tokens and are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nag_guidance.integration.denoiser_hooks import bind_forward, unbind
from nag_guidance.integration.family import Family, Undo
from nag_guidance.integration.state import NAGState, NegativeText

LTX = Family(
    name="ltx",
    denoiser_classes=("LTXVideoTransformer3DModel",),
    text_width=("caption_channels",),
    pipelines=("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline"),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)


@dataclass
class _Connected:
    """Per call (``call.family``): the negative's rows appended to the connectors' batch, once per call."""

    rows: int
    split: bool = False  # taken back out of the connectors' output


def _connector_hooks(pipe: Any, state: NAGState) -> list[Undo]:
    connectors = getattr(pipe, "connectors", None)
    if connectors is None:
        raise ValueError(f"{type(pipe).__name__} has no text connectors: NAG cannot follow its text path")
    handles = [
        connectors.register_forward_pre_hook(_connect_negative(state), with_kwargs=True),
        connectors.register_forward_hook(_split_negative(state)),
    ]
    return [handle.remove for handle in handles]


def _connect_negative(state: NAGState):
    """Append the raw negative to the connectors' batch (once per call)."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = state.call
        if call is None or call.negative is None or call.family is not None:
            return None
        bound = bind_forward(module, args, kwargs)
        embeds = bound.arguments["text_encoder_hidden_states"]
        mask = bound.arguments["attention_mask"]
        negative = call.negative
        if negative.embeds.shape[1:] != embeds.shape[1:]:
            raise ValueError(
                f"the NAG negative's embeddings have shape {tuple(negative.embeds.shape[1:])} per row, the "
                f"prompt's {tuple(embeds.shape[1:])}: LTX-2's connectors need the same length"
            )
        negative_mask = negative.mask if negative.mask is not None else torch.ones_like(mask[:1])
        count = negative.embeds.shape[0]
        bound.arguments["text_encoder_hidden_states"] = torch.cat([embeds, negative.embeds.to(embeds)])
        bound.arguments["attention_mask"] = torch.cat([mask, negative_mask.to(mask).expand(count, -1)])
        call.family = _Connected(count)
        return unbind(bound)

    return pre_forward


def _split_negative(state: NAGState):
    """Take the negative's rows back out of the connectors' output; they become the NAG negative."""

    def post_forward(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        call = state.call
        connected: _Connected | None = call.family if call is not None else None
        if connected is None or connected.split:
            return None
        connected.split = True
        video, audio, mask = output
        count = connected.rows
        call.negative = NegativeText(video[-count:], mask[-count:])
        return video[:-count], audio[:-count], mask[:-count]

    return post_forward


LTX2 = Family(
    name="ltx2",
    denoiser_classes=("LTX2VideoTransformer3DModel",),
    pipelines=("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline"),
    mechanism="cross",
    pipeline_hooks=_connector_hooks,
    preset="ltx2",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
    attention=("attn2",),
)
