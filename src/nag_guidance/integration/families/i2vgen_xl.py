"""I2VGenXL (``I2VGenXLUNet``; ``I2VGenXLPipeline``): a 3D UNet whose spatial transformers' ``attn2`` attend, per
frame, to [CLIP text | tokens of the input image's latents | its CLIP embedding].

The model appends its image tokens to the text, so the negative (appended to the text input) sits between the
prompt's text and them: the wrapper takes it from there, and the image tokens are shared context of both branches.
The temporal transformers' ``attn2`` attend over frames only, not guided. CFG batched as [uncond, cond] (the
unconditional rows with zero image embeddings).
"""

from __future__ import annotations

from nag_guidance.integration.family import Family

I2VGEN_XL = Family(
    name="i2vgen-xl",
    denoiser_classes=("I2VGenXLUNet",),
    text_width=("cross_attention_dim",),
    pipelines=("I2VGenXLPipeline",),
    mechanism="cross",
    context_after_text=True,
    preset="generic",
    encode_returns=("embeds", "uncond"),
    denoisers=("unet",),
    mask_arg=None,
    attention=("*.attentions.*.attn2",),  # not temp_attentions.*, not transformer_in
)
