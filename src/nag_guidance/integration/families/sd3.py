"""Stable Diffusion 3 / 3.5 (incl. large-turbo): MMDiT blocks with joint [image; text] attention.

Only each block's ``attn`` is text attention; SD3.5's ``attn2`` (the dual-attention layers) is image
self-attention and is left alone. The pipeline batches CFG as [uncond, cond]; the negative's text stream is
modulated with the prompt rows' timestep + pooled embedding (see ``joint_attention``).
"""

from nag_guidance.integration.family import Family, JointLayout

SD3 = Family(
    name="sd3",
    denoiser_classes=("SD3Transformer2DModel",),
    text_width=("joint_attention_dim",),
    pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    mechanism="joint",
    preset="sd35-large-turbo",
    encode_returns=("embeds", "uncond", "pooled", "uncond_pooled"),
    mask_arg=None,
    attention=("attn",),
    layout=JointLayout("sdpa", text_first=False),
    pooled_arg="pooled_projections",
)
