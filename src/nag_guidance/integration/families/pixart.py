"""PixArt-α/Σ and SANA: DiT blocks whose ``attn2`` attends to T5/Gemma text behind a caption projection, with
a padding mask that the pipelines pass as ``encoder_attention_mask``."""

from nag_guidance.integration import cross_attention
from nag_guidance.integration.registry import Family

PIXART = Family(
    name="pixart",
    text_width="caption_channels",
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    install=cross_attention.install,
    preset="generic",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)

SANA = Family(
    name="sana",
    text_width="caption_channels",
    pipelines=("SanaPipeline", "SanaSprintPipeline"),
    install=cross_attention.install,
    preset="generic",
    # SanaSprintPipeline.encode_prompt returns only the first two
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)
