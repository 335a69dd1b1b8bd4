"""Architecture of the third embedded model, ``tiny-wan``: stock classes that the stock ``WanPipeline`` loads.

* ``AutoencoderKLWan`` (causal 3D convolutions), encoder width 8, decoder width 16, one downsampling in space
  and time: 9 frames of 32×32 ↔ 16 channels × 5 latent frames × 16×16, near pixel space (16 numbers for the
  2 × 2 × 2 × 3 pixel values under each). ``scale_factor_temporal=2`` and ``scale_factor_spatial=2`` are what
  the pipeline reads; ``latents_mean`` / ``latents_std`` are measured after training (the pipeline decodes
  ``latents · std + mean``). (A first VAE with two spatial downsamplings, 8×8 latents, blurred the 10–14 px
  shapes: after 800 steps the checker read 39 % of its reconstructed shapes right; docs/tiny-wan.md.)
* ``WanTransformer3DModel``, 4 blocks, width 128 (4 heads of 32), patch (1, 4, 4): 5 × 4 × 4 = 80 video tokens.
* ``UMT5EncoderModel`` (2 layers, width 64) + the word-level ``T5Tokenizer`` of ``flux_model`` built from the
  video captions' words.
* The SD model's scheduler (``model.build_scheduler``: flow sigmas, ``flow_shift=1``, first order, final σ 0):
  the pipeline's ``set_timesteps(n)`` then gives the uniform rectified-flow Euler grids {1 → 0}, {1, .5 → 0},
  {1, .75, .5, .25 → 0} that the student is distilled on, and the transformer's timestep is 1000·σ.

WanPipeline encodes the prompt with the attention mask, cuts the embeddings at the prompt's length and pads
them with zeros to ``max_sequence_length`` (512 by default); the transformer attends to all 512 without a mask.
``WanText`` reproduces exactly that, so the model is trained on the pipeline's default length. Training does
not pay for 512 context tokens, though: after the transformer's text projection every zero-padding token is the
same vector, so attending to 496 copies of it equals attending to one copy whose attention logit is raised by
log 496. ``compact_context`` installs a cross-attention processor that does exactly this on a 17-token context
(16 caption positions + one padding token); the exported model runs with the stock processors on the 512
tokens the pipeline builds, and ``tests/tiny/test_wan_model.py`` checks that both give the same velocity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from nag_guidance.tiny.flux_model import build_t5_tokenizer, t5_settings
from nag_guidance.tiny.video_data import FRAMES, VOCABULARY

PIPELINE_SEQUENCE_LENGTH = 512
"""``WanPipeline``'s default ``max_sequence_length``: the context length the transformer is trained with."""
CAPTION_TOKENS = 16
"""Longest caption in tokens (with ``</s>``); the text encoder's masked output does not depend on padding."""
LATENT_CHANNELS = 16
TEMPORAL_FACTOR = 2
SPATIAL_FACTOR = 2
LATENT_FRAMES = (FRAMES - 1) // TEMPORAL_FACTOR + 1
LATENT_SIZE = 32 // SPATIAL_FACTOR
LATENT_SHAPE = (LATENT_CHANNELS, LATENT_FRAMES, LATENT_SIZE, LATENT_SIZE)
T5_WIDTH = 64


def build_wan_tokenizer() -> T5Tokenizer:
    return build_t5_tokenizer(VOCABULARY, PIPELINE_SEQUENCE_LENGTH)


def build_wan_text_encoder(tokenizer: T5Tokenizer) -> UMT5EncoderModel:
    return UMT5EncoderModel(UMT5Config(**t5_settings(tokenizer, T5_WIDTH, CAPTION_TOKENS)))


def build_wan_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=16,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[True],
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
        scale_factor_temporal=TEMPORAL_FACTOR,
        scale_factor_spatial=SPATIAL_FACTOR,
    )


def build_wan_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 4, 4),
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=T5_WIDTH,
        freq_dim=64,
        ffn_dim=256,
        num_layers=4,
        rope_max_seq_len=64,
    )


COMPACT_TOKENS = CAPTION_TOKENS + 1
"""Context length in training: the caption positions and one token standing for the remaining zero padding."""


class CompactContextAttention:
    """Cross-attention processor for a compact context whose last token stands for
    ``PIPELINE_SEQUENCE_LENGTH - CAPTION_TOKENS`` identical padding tokens (its logit is raised by the log of
    that count): the same output as the stock ``WanAttnProcessor`` on the full zero-padded context."""

    def __init__(self) -> None:
        self.bias = math.log(PIPELINE_SEQUENCE_LENGTH - CAPTION_TOKENS)

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: object = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] != COMPACT_TOKENS:
            raise ValueError(f"the compact context has {COMPACT_TOKENS} tokens (self-attention is not for this)")
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        bias = torch.zeros(COMPACT_TOKENS, dtype=query.dtype, device=query.device)
        bias[-1] = self.bias
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.view(1, 1, 1, -1))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def compact_context(transformer: WanTransformer3DModel) -> WanTransformer3DModel:
    """``transformer`` with every cross-attention reading the compact training context (``WanText(compact=
    True)``); returns it."""
    for block in transformer.blocks:
        block.attn2.set_processor(CompactContextAttention())
    return transformer


class WanText:
    """Captions → the (N, 512, 64) context ``WanPipeline`` builds at its default length: the masked encoder
    output cut at each caption's length and zero-padded; ``compact=True``: its first 17 tokens, for a
    transformer under ``compact_context``."""

    def __init__(self, tokenizer: T5Tokenizer, encoder: UMT5EncoderModel, compact: bool = False) -> None:
        self.tokenizer, self.encoder, self.compact = tokenizer, encoder, compact
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for text in set(texts) - set(self.cache):
            tokens = self.tokenizer(
                text,
                padding="max_length",
                max_length=CAPTION_TOKENS,
                truncation=True,
                add_special_tokens=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            self.cache[text] = (tokens.input_ids[0], tokens.attention_mask[0])
        return torch.stack([self.cache[t][0] for t in texts]), torch.stack([self.cache[t][1] for t in texts])

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokens(texts)
        hidden = self.encoder(ids, mask).last_hidden_state * mask[..., None]
        length = COMPACT_TOKENS if self.compact else PIPELINE_SEQUENCE_LENGTH
        return torch.cat([hidden, hidden.new_zeros(len(texts), length - CAPTION_TOKENS, T5_WIDTH)], 1)


def wan_predict(
    transformer: WanTransformer3DModel, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """Velocity at video latents ``x`` (N, 16, 5, 16, 16) for the (512- or compact 17-token) context ``cond``."""
    return transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond, return_dict=False)[0]
