"""Wan 2.1 / 2.2, text- and image-to-video: ``attn2`` attends to the UMT5 text (zero-padded to a fixed length).

Wan 2.2 A14B has a second, low-noise ``transformer_2``; both are guided. In Wan 2.1 I2V the transformer puts
the CLIP image tokens in front of the text and ``attn2`` attends to both: those tokens are shared context of
the prompt and negative branches (the processor finds the text as the last 512 tokens, which holds for the
negative too because the pipeline pads it to the same length).
"""

from nag_guidance.integration.family import Family

WAN = Family(
    name="wan",
    denoiser_classes=("WanTransformer3DModel",),
    text_width=("text_dim",),
    pipelines=("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline"),
    mechanism="cross",
    preset="wan21",
    encode_returns=("embeds", "uncond"),
    denoisers=("transformer", "transformer_2"),
    mask_arg=None,
)
