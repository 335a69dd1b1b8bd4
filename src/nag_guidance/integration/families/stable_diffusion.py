"""SD 1.x/2.x and SDXL: a ``UNet2DConditionModel`` whose ``attn2`` layers attend to the CLIP text.

Both families share the denoiser class; a pipeline with a second text encoder (``text_encoder_2``, the SDXL
layout, the refiner's included) is SDXL. The pooled text and time ids of SDXL feed the UNet's added embeddings,
not attention; they stay the prompt's. Where the UNet projects the text itself (``encoder_hid_dim``: DeepFloyd IF's
T5), the negative's embeddings are checked against that width. AnimateDiff / PIA's ``UNetMotionModel`` is the same
UNet with motion modules between its blocks; those are self-attention over frames (their ``attn2`` included) and
stay stock: only the ``attn2`` layers of the spatial ``attentions`` blocks attend to text.
"""

from typing import Any

from nag_guidance.integration.family import Family


def _has_second_encoder(pipe: Any) -> bool:
    return "text_encoder_2" in (getattr(pipe, "components", None) or {})


def _has_one_encoder(pipe: Any) -> bool:
    return not _has_second_encoder(pipe)


_TEXT_ATTENTION = ("*attentions.*.attn2",)  # not the motion modules' attn2 (self-attention over frames)

SD = Family(
    name="sd",
    denoiser_classes=("UNet2DConditionModel", "UNetMotionModel"),
    accepts=_has_one_encoder,
    text_width=("encoder_hid_dim", "cross_attention_dim"),
    flow=False,
    pipelines=(
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ),
    mechanism="cross",
    preset="sd15",
    encode_returns=("embeds", "uncond"),
    denoisers=("unet",),
    attention=_TEXT_ATTENTION,
)

SDXL = Family(
    name="sdxl",
    denoiser_classes=("UNet2DConditionModel", "UNetMotionModel"),
    accepts=_has_second_encoder,
    text_width=("encoder_hid_dim", "cross_attention_dim"),
    flow=False,
    pipelines=(
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    ),
    mechanism="cross",
    preset="sdxl",
    encode_returns=("embeds", "uncond", "pooled", "uncond_pooled"),
    denoisers=("unet",),
    attention=_TEXT_ATTENTION,
    pooled_arg="added_cond_kwargs['text_embeds']",
)
