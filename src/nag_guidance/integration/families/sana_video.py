"""Sana-Video (``SanaVideoTransformer3DModel``; ``SanaVideoPipeline``, ``SanaImageToVideoPipeline``): as SANA, linear
self-attention blocks whose ``attn2`` attends to the projected Gemma-2 text with its padding mask; CFG batched as
[uncond, cond].

The image-to-video pipeline gives every token its own timestep (the conditioning frame's at 0): the schedule
window and the step count follow the noisiest token.
"""

from nag_guidance.integration.family import Family

SANA_VIDEO = Family(
    name="sana-video",
    denoiser_classes=("SanaVideoTransformer3DModel",),
    text_width=("caption_channels",),
    pipelines=("SanaVideoPipeline", "SanaImageToVideoPipeline"),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
)
