"""I2VGenXL (``I2VGenXLUNet``; ``I2VGenXLPipeline``): a 3D UNet whose spatial transformers' ``attn2`` attend, per
frame, to [CLIP text | tokens of the input image's latents | its CLIP embedding].

The model appends its image tokens to the text, so the negative (appended to the text input) sits between the
prompt's text and them: the wrapper takes it from there, and the image tokens are shared context of both branches.
The temporal transformers' ``attn2`` attend over frames only, not guided. CFG batched as [uncond, cond] (the
unconditional rows with zero image embeddings).
"""

from __future__ import annotations

from typing import Any

from nag_guidance.integration import negative_text
from nag_guidance.integration.cross_attention import CrossAttentionNAG
from nag_guidance.integration.registry import Family, Undo
from nag_guidance.integration.state import NAGState


class _ImageTokensAfterText(CrossAttentionNAG):
    shared_after_text = True


def install(pipe: Any, family: Family, state: NAGState) -> list[Undo]:
    return negative_text.install(pipe, family, state, _ImageTokensAfterText)


I2VGEN_XL = Family(
    name="i2vgen-xl",
    text_width="cross_attention_dim",
    pipelines=("I2VGenXLPipeline",),
    install=install,
    preset="generic",
    encode_returns=("embeds", "uncond"),
    denoisers=("unet",),
    mask_arg=None,
    attention=("*.attentions.*.attn2",),  # not temp_attentions.*, not transformer_in
)
