"""Architecture of the embedded model: stock diffusers / transformers classes with tiny configurations.

The pipeline is a plain ``StableDiffusionPipeline``: a word-level ``CLIPTokenizer`` + small ``CLIPTextModel``,
a ``UNet2DConditionModel`` whose cross-attention layers are ordinary diffusers ``Attention`` modules (so NAG's
attention hooks see the same structure as in real SD models), a two-block ``AutoencoderKL`` (one 2× down-sample:
32×32 pixels ↔ 16×16×4 latents) and a flow-matching Euler scheduler.

Sizes are set by what trains in under an hour on a 2-core CPU: the UNet works on 16×16 latents, and its
attention (self + cross) sits at 8×8, 4×4 and in the middle block only; attention over the 256 tokens of a
16×16 map costs more than all the convolutions together on CPU.

Scheduler choice: ``FlowMatchEulerDiscreteScheduler`` has no ``init_noise_sigma``, which
``StableDiffusionPipeline.prepare_latents`` reads, so the stock pipeline cannot drive it; its default grid also
ends on sigma 0.001, so a 2-step run is really one step plus a no-op. ``DPMSolverMultistepScheduler`` with
``use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=1`` is exactly the Euler step of a
rectified flow (x0 = x − σ·v; x' = (σ'/σ)·x + (1 − σ'/σ)·x0), has ``init_noise_sigma = 1`` and an identity
``scale_model_input``, and its grid is uniform: 1 step = {1 → 0}, 2 = {1, 0.5 → 0}, 4 = {1, .75, .5, .25 → 0}
(the first sigma is 0.999). The UNet's timestep is ``1000 · σ``.
"""

from __future__ import annotations

from collections import Counter

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from nag_guidance.tiny.data import IMAGE_SIZE, VOCABULARY

NUM_TRAIN_TIMESTEPS = 1000
MAX_TOKENS = 12
"""Tokenizer length: the longest caption is 7 words + start and end tokens."""
TEXT_WIDTH = 64
LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 2
UNET_CHANNELS = (32, 64, 64)
VAE_CHANNELS = (32, 64)

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"


def train_word_bpe(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE vocabulary and merge list in CLIP's format under which every word in ``words`` is one token.

    Merges are learnt the usual BPE way (most frequent pair first, ties by sorted order), which keeps them
    consistent: applying them by rank re-creates exactly these segmentations. Single characters stay in the
    vocabulary, so an unknown word still tokenizes (into pieces the model has never seen).
    """
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))}
    symbols = {s for p in pieces.values() for s in p}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter((a, b) for p in pieces.values() for a, b in zip(p, p[1:], strict=False))
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda pair: pairs[pair])
        merges.append(best)
        for w, p in pieces.items():
            merged, i = [], 0
            while i < len(p):
                if i + 1 < len(p) and (p[i], p[i + 1]) == best:
                    merged.append(p[i] + p[i + 1])
                    i += 2
                else:
                    merged.append(p[i])
                    i += 1
            pieces[w] = merged
        symbols.add(best[0] + best[1])
    letters = {ch for w in words for ch in w} | set("abcdefghijklmnopqrstuvwxyz")
    symbols |= letters | {ch + "</w>" for ch in letters}
    ordered = [START_TOKEN, END_TOKEN, *sorted(symbols)]
    return {tok: i for i, tok in enumerate(ordered)}, merges


def build_tokenizer() -> CLIPTokenizer:
    vocab, merges = train_word_bpe(VOCABULARY)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_WIDTH,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    """Convolutional SD-style UNet on 16×16 latents: 16 → 8 → 4, attention at 8×8, 4×4 and in the middle block."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=32,
        norm_num_groups=8,
    )


def build_vae() -> AutoencoderKL:
    """Two blocks, one 2× down-sample: 32×32×3 pixels ↔ 16×16×4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def build_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        use_flow_sigmas=True,
        flow_shift=1.0,
        prediction_type="flow_prediction",
        solver_order=1,
        final_sigmas_type="zero",
        steps_offset=1,  # what StableDiffusionPipeline insists on; unused by the "linspace" spacing
    )


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters (recorded in the exported metadata)."""
    return sum(p.numel() for p in module.parameters())
