"""Latte (``LatteTransformer3DModel``; ``LattePipeline``): spatial PixArt-like blocks whose ``attn2`` attends to the
projected T5 text, alternating with temporal blocks that attend to no text (not guided).

The spatial blocks fold the frames into the batch (each sample's frames are consecutive rows), which the
cross-attention wrapper follows. The pipeline cuts the text to its longest real length (``mask_feature``) and
passes no mask; the negative is cut to its own. CFG batched as [uncond, cond].
"""

from nag_guidance.integration.family import Family

LATTE = Family(
    name="latte",
    denoiser_classes=("LatteTransformer3DModel",),
    text_width=("caption_channels",),
    pipelines=("LattePipeline",),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "uncond"),
)
