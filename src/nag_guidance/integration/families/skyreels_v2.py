"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``): text-, image-to-video and the diffusion-forcing pipelines, on a
Wan-architecture transformer whose ``attn2`` attends to the UMT5 text (zero-padded to a fixed length, no mask).

As in Wan 2.1 I2V, the I2V model puts the CLIP image tokens in front of the text and its processor finds the text
as the last 512 tokens, which holds for the negative too (padded to the prompt's length). Diffusion forcing gives
every latent frame its own timestep (prefix frames of the I2V / V2V variants stay at 0): the schedule window and
the step count follow the noisiest frame. All five run CFG as separate "cond"/"uncond" forwards.
"""

from nag_guidance.integration.family import Family

SKYREELS_V2 = Family(
    name="skyreels-v2",
    denoiser_classes=("SkyReelsV2Transformer3DModel",),
    text_width=("text_dim",),
    pipelines=(
        "SkyReelsV2Pipeline",
        "SkyReelsV2ImageToVideoPipeline",
        "SkyReelsV2DiffusionForcingPipeline",
        "SkyReelsV2DiffusionForcingImageToVideoPipeline",
        "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
    ),
    mechanism="cross",
    preset="generic",
    encode_returns=("embeds", "uncond"),
    mask_arg=None,
)
