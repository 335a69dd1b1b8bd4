"""SD 1.x/2.x and SDXL: a ``UNet2DConditionModel`` whose ``attn2`` layers attend to the CLIP text.

The pooled text and time ids of SDXL feed the UNet's added embeddings, not attention; they stay the prompt's.
"""

from nag_guidance.integration import cross_attention
from nag_guidance.integration.registry import Family

SD = Family(
    name="sd",
    text_width="cross_attention_dim",
    pipelines=(
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ),
    install=cross_attention.install,
    preset="sd15",
    encode_returns=("embeds", "uncond"),
    denoisers=("unet",),
)

SDXL = Family(
    name="sdxl",
    text_width="cross_attention_dim",
    pipelines=(
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    ),
    install=cross_attention.install,
    preset="sdxl",
    encode_returns=("embeds", "uncond", "pooled", "uncond_pooled"),
    denoisers=("unet",),
    pooled_arg="added_cond_kwargs['text_embeds']",
)
