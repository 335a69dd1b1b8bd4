"""Architecture of the second embedded model, ``tiny-flux``: stock classes that the stock ``FluxPipeline`` loads.

* ``FluxTransformer2DModel`` with 2 double-stream and 4 single-stream blocks, width 128 (4 heads of 32),
  ``guidance_embeds=False`` (schnell-like: no distilled-guidance input). It sees the 16×16×4 latents of the SD
  model's VAE packed into 2×2 patches: 8×8 = 64 image tokens of 16 channels.
* ``CLIPTextModel`` + ``CLIPTokenizer``: the SD model's word-level builders (``model.build_tokenizer`` and
  ``model.build_text_encoder``); Flux uses only its pooled output.
* ``T5EncoderModel`` (2 layers, width 64) + ``T5Tokenizer`` (transformers' tokenizers-backed T5 tokenizer) built
  from an in-memory unigram vocabulary in which every caption word is one piece, so it saves and loads offline.
* The VAE is the SD model's, with ``shift_factor = 0`` (Flux decodes ``latents / scaling_factor +
  shift_factor``). Its two blocks make the pipeline's ``vae_scale_factor`` 2, so 32 px images need height and
  width divisible by 4.
* ``FlowMatchEulerDiscreteScheduler`` with ``use_dynamic_shifting=False, shift=1``: the pipeline passes sigmas
  ``linspace(1, 1/n, n)`` and the scheduler appends 0, so 1/2/4 steps are the uniform rectified-flow Euler grids
  {1 → 0}, {1, .5 → 0}, {1, .75, .5, .25 → 0}. The transformer's timestep input is σ (the pipeline divides the
  scheduler's 1000·σ by 1000).

Flux attends to every text token, padding included (the pipeline passes no attention mask), so the model is
trained, and must be called, with ``max_sequence_length=TEXT_TOKENS``; the pipeline's default of 512 would put
500 padding tokens the model has never seen into every attention.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from nag_guidance.tiny.data import VOCABULARY
from nag_guidance.tiny.model import LATENT_CHANNELS, LATENT_SIZE

TEXT_TOKENS = 12
"""T5 sequence length the model is trained with: pass ``max_sequence_length=TEXT_TOKENS`` to the pipeline."""
T5_WIDTH = 64
TRANSFORMER_HEADS = 4
TRANSFORMER_HEAD_DIM = 32
DOUBLE_BLOCKS = 2
SINGLE_BLOCKS = 4
PACKED_CHANNELS = LATENT_CHANNELS * 4
"""Channels of an image token: a 2×2 patch of 4-channel latents."""
IMAGE_TOKENS = (LATENT_SIZE // 2) ** 2
DEFAULT_SAMPLE_SIZE = LATENT_SIZE
"""Value for ``FluxPipeline.default_sample_size`` (height = default_sample_size · vae_scale_factor = 32 px)."""

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
WORD_PREFIX = "▁"
"""SentencePiece's word-start marker (the tokenizer's Metaspace pre-tokenizer adds it)."""


def build_t5_tokenizer(vocabulary: tuple[str, ...] = VOCABULARY, max_length: int = TEXT_TOKENS) -> T5Tokenizer:
    """Unigram vocabulary: the special tokens, one piece per caption word (high score, so a known word is always
    one token) and single characters (low score: unknown words still tokenize). tiny-wan passes its own words
    and length."""
    words = [WORD_PREFIX + w for w in sorted(set(vocabulary))]
    letters = sorted({ch for w in vocabulary for ch in w} | set("abcdefghijklmnopqrstuvwxyz"))
    pieces = [(PAD_TOKEN, 0.0), (EOS_TOKEN, 0.0), (UNK_TOKEN, 0.0)]
    pieces += [(w, -1.0) for w in words] + [(WORD_PREFIX, -5.0)] + [(ch, -10.0) for ch in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def t5_settings(tokenizer: T5Tokenizer, width: int, max_distance: int) -> dict:
    """The tiny T5-style encoder's configuration (the Flux model's T5, the video model's UMT5)."""
    return dict(
        vocab_size=len(tokenizer.get_vocab()),
        d_model=width,
        d_kv=width // 4,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=max_distance,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )


def build_t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    return T5EncoderModel(T5Config(**t5_settings(tokenizer, T5_WIDTH, TEXT_TOKENS)))


def build_transformer(pooled_dim: int) -> FluxTransformer2DModel:
    """``pooled_dim``: width of the CLIP text encoder's pooled output."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=PACKED_CHANNELS,
        num_layers=DOUBLE_BLOCKS,
        num_single_layers=SINGLE_BLOCKS,
        attention_head_dim=TRANSFORMER_HEAD_DIM,
        num_attention_heads=TRANSFORMER_HEADS,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )


def build_flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(N, 4, 16, 16) latents → (N, 64, 16) tokens, exactly as ``FluxPipeline._pack_latents``."""
    n, c, h, w = latents.shape
    x = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack`` (``FluxPipeline._unpack_latents``)."""
    n, _, channels = tokens.shape
    side = LATENT_SIZE // 2
    x = tokens.view(n, side, side, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels // 4, side * 2, side * 2)


def image_ids() -> torch.Tensor:
    """Rotary position ids of the image tokens (``FluxPipeline._prepare_latent_image_ids``)."""
    side = LATENT_SIZE // 2
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    return ids.reshape(side * side, 3)


def text_ids() -> torch.Tensor:
    return torch.zeros(TEXT_TOKENS, 3)
