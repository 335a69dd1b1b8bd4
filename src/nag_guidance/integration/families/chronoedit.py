"""ChronoEdit (``ChronoEditTransformer3DModel``; ``ChronoEditPipeline``): image editing as a short video on a Wan 2.1
I2V transformer, whose ``attn2`` attends to the input image's CLIP tokens and the UMT5 text.

As in Wan I2V, the processor finds the text as the last 512 tokens (the negative is padded to the prompt's length,
so that holds for it too) and the image tokens are shared context of both branches. The pipeline runs CFG as
separate forwards without ``cache_context``: the unconditional one is recognised by its embeddings.
"""

from nag_guidance.integration.family import Family

CHRONOEDIT = Family(
    name="chronoedit",
    denoiser_classes=("ChronoEditTransformer3DModel",),
    text_width=("text_dim",),
    pipelines=("ChronoEditPipeline",),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "uncond"),
    mask_arg=None,
)
