"""Wan VACE (``WanVACETransformer3DModel``; ``WanVACEPipeline``, Wan 2.1 and 2.2 A14B): a Wan transformer with a
control branch.

Both the main blocks and the VACE control blocks attend to the same UMT5 text through ``attn2`` (zero-padded to a
fixed length, no mask), so both are guided: the control tokens are video tokens too (the control video's), and
their hints are added to the main stream. The pipeline runs CFG as separate "cond"/"uncond" forwards.
"""

from nag_guidance.integration.family import Family

WAN_VACE = Family(
    name="wan-vace",
    denoiser_classes=("WanVACETransformer3DModel",),
    text_width=("text_dim",),
    pipelines=("WanVACEPipeline",),
    mechanism="cross",
    preset="wan21",
    encode_returns=("embeds", "uncond"),
    denoisers=("transformer", "transformer_2"),
    mask_arg=None,
)
