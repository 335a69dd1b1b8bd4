"""Text-to-video SD (``UNet3DConditionModel``; ``TextToVideoSDPipeline``, ``VideoToVideoSDPipeline``, ModelScope /
Zeroscope): the spatial transformers' ``attn2`` attend to the CLIP text per frame (the UNet folds the frames into
the batch, which the cross-attention wrapper follows).

The temporal transformers also have an ``attn2``, but called without text it attends over the frames: not text
attention, so not guided. CFG batched as [uncond, cond]; the pipelines make one video per prompt.
"""

from nag_guidance.integration.family import Family

TEXT_TO_VIDEO_SD = Family(
    name="text-to-video-sd",
    denoiser_classes=("UNet3DConditionModel",),
    text_width=("cross_attention_dim",),
    pipelines=("TextToVideoSDPipeline", "VideoToVideoSDPipeline"),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "uncond"),
    denoisers=("unet",),
    mask_arg=None,
    attention=("*.attentions.*.attn2",),  # not temp_attentions.*, not transformer_in
)
