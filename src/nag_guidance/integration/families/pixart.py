"""PixArt-α/Σ and SANA: DiT blocks whose ``attn2`` attends to T5/Gemma text behind a caption projection, with
a padding mask that the pipelines pass as ``encoder_attention_mask``."""

from nag_guidance.integration.family import Family

PIXART = Family(
    name="pixart",
    denoiser_classes=("PixArtTransformer2DModel",),
    text_width=("caption_channels",),
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)

SANA = Family(
    name="sana",
    denoiser_classes=("SanaTransformer2DModel",),
    text_width=("caption_channels",),
    pipelines=("SanaPipeline", "SanaSprintPipeline"),
    mechanism="cross",
    preset="generic",
    # SanaSprintPipeline.encode_prompt returns only the first two
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)
