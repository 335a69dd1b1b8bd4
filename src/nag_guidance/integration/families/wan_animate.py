"""Wan 2.2 Animate (``WanAnimateTransformer3DModel``; ``WanAnimatePipeline``, animation and replacement modes).

Its Wan blocks' ``attn2`` attends to the CLIP tokens of the reference image and the UMT5 text (the processor finds
the text as the last 512 tokens; the negative is padded to the prompt's length, so that holds for it too): the
image tokens are shared context of both branches, as in Wan 2.1 I2V. The face-adapter blocks attend to the motion
features of the face video, not to text, and are left alone. CFG runs as separate "cond"/"uncond" forwards (the
unconditional one with the face blanked).
"""

from nag_guidance.integration.family import Family

WAN_ANIMATE = Family(
    name="wan-animate",
    denoiser_classes=("WanAnimateTransformer3DModel",),
    text_width=("text_dim",),
    pipelines=("WanAnimatePipeline",),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "uncond"),
    mask_arg=None,
)
