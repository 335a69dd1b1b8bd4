"""Tiny, random, offline video pipelines (Wan 2.1/2.2 T2V, I2V and VACE, LTX-Video, LTX-2) for the NAG tests.

Every component is built in memory from a fixed seed: no download, no file. Sizes are the smallest that keep each
pipeline's own shape rules (Wan: height/width multiple of 16, 1 + 4k frames; LTX: 1 + 8k frames) while leaving
several video tokens per frame, so per-token effects (the τ clip) and batch-2 shape bugs stay visible.

``*_call_kwargs`` give call arguments that decode nothing (``output_type="latent"``) and take 2 steps.
"""

from __future__ import annotations

import string

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Gemma3TextConfig,
    Gemma3TextModel,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

WORDS = (
    "a",
    "cat",
    "dog",
    "red",
    "blue",
    "car",
    "blurry",
    "glasses",
    "dark",
    "low",
    "quality",
    "video",
    "of",
)


def tiny_tokenizer(model_max_length: int = 512) -> T5Tokenizer:
    """A unigram T5 tokenizer over letters and a few whole words, built from an in-memory vocabulary."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in WORDS]
    vocab += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ",.!?-'"]
    vocab += [(f"▁{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(vocab_size: int, d_model: int = 32) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
    )
    return T5EncoderModel(config).eval()


# --------------------------------------------------------------------------------------------- Wan


def _wan_transformer(in_channels: int, image_dim: int | None = None) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=image_dim,
    ).eval()


def _wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def _wan_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def make_wan_t2v(dual: bool = False):
    """WanPipeline: Wan 2.1 (one transformer) or, with ``dual``, Wan 2.2 A14B (``transformer_2`` + boundary)."""
    from diffusers import WanPipeline

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = _wan_transformer(in_channels=16)
    transformer_2 = None
    if dual:
        torch.manual_seed(2)
        transformer_2 = _wan_transformer(in_channels=16)
    torch.manual_seed(3)
    vae = _wan_vae()
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.9 if dual else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_wan_i2v(dual: bool = False):
    """WanImageToVideoPipeline: Wan 2.1 I2V (CLIP image tokens in cross-attention) or Wan 2.2 A14B I2V (``dual``:
    two transformers, no image encoder, the image enters only through the latent channels)."""
    from diffusers import WanImageToVideoPipeline

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    image_encoder = image_processor = transformer_2 = None
    if dual:
        torch.manual_seed(1)
        transformer = _wan_transformer(in_channels=36)
        torch.manual_seed(2)
        transformer_2 = _wan_transformer(in_channels=36)
    else:
        torch.manual_seed(1)
        transformer = _wan_transformer(in_channels=36, image_dim=4)
        torch.manual_seed(4)
        image_encoder = _tiny_clip_vision()
        image_processor = CLIPImageProcessor(crop_size=32, size=32)
    torch.manual_seed(3)
    vae = _wan_vae()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.9 if dual else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_clip_vision() -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(
        hidden_size=4,
        projection_dim=4,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        intermediate_size=16,
        patch_size=8,
    )
    return CLIPVisionModelWithProjection(config).eval()


def tiny_image(seed: int = 0, size: int = 32):
    """A deterministic random RGB PIL image (I2V input)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def wan_call_kwargs(**overrides) -> dict:
    """2 steps, 32×32, 5 frames → latents 2×4×4 → 8 video tokens per sample; ``max_sequence_length`` stays at the
    pipeline default (512), which Wan I2V's processor hard-codes."""
    kwargs = dict(
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


def _wan_vace_transformer() -> torch.nn.Module:
    from diffusers import WanVACETransformer3DModel

    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        vace_layers=[0, 1],
        vace_in_channels=96,  # 2 × 16 latent channels + 8 × 8 mask channels
    ).eval()


def make_wan_vace(dual: bool = False):
    """WanVACEPipeline: two main blocks and two VACE control blocks; ``dual``: Wan 2.2 (``transformer_2``)."""
    from diffusers import WanVACEPipeline

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = _wan_vace_transformer()
    transformer_2 = None
    if dual:
        torch.manual_seed(2)
        transformer_2 = _wan_vace_transformer()
    torch.manual_seed(3)
    vae = _wan_vae()
    pipe = WanVACEPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.9 if dual else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_video(frames: int = 5, size: int = 32) -> list:
    """Deterministic random RGB frames (a control or source video)."""
    return [tiny_image(seed, size) for seed in range(frames)]


def _t5_encoder_for_512(vocab_size: int) -> T5EncoderModel:
    """The T5 encoder with its output ×4: the few tokens of a test prompt then weigh enough against the 512 − n
    padding tokens of the processors that need 512 text tokens (Wan-style image context) for NAG to show."""
    torch.manual_seed(0)
    text_encoder = _t5_encoder(vocab_size)
    with torch.no_grad():
        text_encoder.encoder.final_layer_norm.weight.mul_(4.0)
    return text_encoder


def make_wan_animate():
    """WanAnimatePipeline: two Wan blocks whose ``attn2`` also attends to CLIP image tokens through its own K/V
    projections (``added_kv_proj_dim``, as in the released model), one face-adapter block, a tiny motion encoder."""
    from diffusers import WanAnimatePipeline, WanAnimateTransformer3DModel

    tokenizer = tiny_tokenizer()
    text_encoder = _t5_encoder_for_512(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        latent_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=4,
        added_kv_proj_dim=24,
        rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
        motion_encoder_size=16,
        motion_style_dim=8,
        motion_dim=4,
        motion_encoder_dim=16,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
    ).eval()
    torch.manual_seed(3)
    vae = _wan_vae()
    torch.manual_seed(4)
    pipe = WanAnimatePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=_wan_scheduler(),
        image_encoder=_tiny_clip_vision(),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_animate_call_kwargs(**overrides) -> dict:
    """``wan_call_kwargs`` with a reference image, 5 pose frames and 5 face frames (the motion encoder's 16 px) in
    one 5-frame segment; the frame count comes from the pose video."""
    kwargs = dict(
        image=tiny_image(),
        pose_video=tiny_video(),
        face_video=tiny_video(size=16),
        mode="animate",
        segment_frame_length=5,
        prev_segment_conditioning_frames=1,
        **wan_call_kwargs(),
    )
    del kwargs["num_frames"]
    kwargs.update(overrides)
    return kwargs


def chronoedit_call_kwargs(**overrides) -> dict:
    """``wan_call_kwargs`` with the input image (the pipeline makes 5 frames without temporal reasoning)."""
    return {"image": tiny_image(), **wan_call_kwargs(**overrides)}


def make_chronoedit():
    """ChronoEditPipeline: a Wan I2V transformer whose ``attn2`` attends to 17 CLIP image tokens through their own
    K/V projections and to the 512 text tokens."""
    from diffusers import ChronoEditPipeline, ChronoEditTransformer3DModel

    tokenizer = tiny_tokenizer()
    text_encoder = _t5_encoder_for_512(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4,
        added_kv_proj_dim=24,
    ).eval()
    torch.manual_seed(3)
    vae = _wan_vae()
    torch.manual_seed(4)
    pipe = ChronoEditPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        image_encoder=_tiny_clip_vision(),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        transformer=transformer,
        vae=vae,
        scheduler=_wan_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------- SkyReels-V2

SKYREELS_V2 = {
    "t2v": "SkyReelsV2Pipeline",
    "i2v": "SkyReelsV2ImageToVideoPipeline",
    "df": "SkyReelsV2DiffusionForcingPipeline",
    "df-i2v": "SkyReelsV2DiffusionForcingImageToVideoPipeline",
    "df-v2v": "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
}
"""The SkyReels-V2 pipelines by kind: text-, image-to-video and their diffusion-forcing variants."""


def make_skyreels_v2(kind: str = "t2v"):
    """A SkyReels-V2 pipeline (``kind``: a key of ``SKYREELS_V2``) on a two-block Wan-like transformer. Only the
    I2V pipeline has a CLIP image encoder (its image tokens come before the text in ``attn2``); the
    diffusion-forcing ones condition on the image or video through the latent frames."""
    import diffusers
    from diffusers import SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    i2v = kind == "i2v"
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36 if i2v else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4 if i2v else None,
    ).eval()
    torch.manual_seed(3)
    components = dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=_wan_vae(),
        scheduler=UniPCMultistepScheduler(flow_shift=8.0, use_flow_sigmas=True, prediction_type="flow_prediction"),
    )
    if i2v:
        torch.manual_seed(4)
        components["image_encoder"] = _tiny_clip_vision()
        components["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    pipe = getattr(diffusers, SKYREELS_V2[kind])(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------- Allegro


def make_allegro():
    """AllegroPipeline: one PixArt-like block (``attn2`` over the projected T5 text, with its padding mask)."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    tokenizer = tiny_tokenizer(model_max_length=128)
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size, d_model=24)
    torch.manual_seed(1)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        cross_attention_dim=24,
        sample_width=8,
        sample_height=8,
        sample_frames=8,
        caption_channels=24,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLAllegro(
        down_block_types=("AllegroDownBlock3D",) * 4,
        up_block_types=("AllegroUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()
    pipe = AllegroPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(clip_sample=False),  # unclipped: NAG's effect stays visible in the output
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def allegro_call_kwargs(**overrides) -> dict:
    """2 steps, 32×32, 5 frames → latents 2×4×4 → 32 video tokens; prompts padded to 16 tokens."""
    kwargs = dict(
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=16,
        clean_caption=False,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------- Latte


def make_latte():
    """LattePipeline: two spatial blocks (``attn2`` over the projected T5 text, run per frame: the frames are
    folded into the batch) and two temporal blocks (no text)."""
    from diffusers import AutoencoderKL, DDIMScheduler, LattePipeline, LatteTransformer3DModel

    tokenizer = tiny_tokenizer(model_max_length=128)
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = LatteTransformer3DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        video_length=3,  # the temporal position table's length
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=2, latent_channels=4).eval()
    pipe = LattePipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DDIMScheduler(clip_sample=False),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latte_call_kwargs(**overrides) -> dict:
    """2 steps, 8×8 latents (the VAE does not downsample), 3 frames → 16 tokens per frame; prompts are cut to their
    longest real length by the pipeline (``mask_feature``), from at most 16 tokens."""
    kwargs = dict(
        height=8,
        width=8,
        video_length=3,
        num_inference_steps=2,
        guidance_scale=1.0,
        clean_caption=False,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------- Sana-Video


def make_sana_video(i2v: bool = False):
    """SanaVideoPipeline (or, with ``i2v``, SanaImageToVideoPipeline): two linear-attention blocks whose ``attn2``
    attends to the Gemma-2 text with its padding mask; the Wan VAE."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        SanaImageToVideoPipeline,
        SanaVideoPipeline,
        SanaVideoTransformer3DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_tokenizer(model_max_length=32)
    torch.manual_seed(0)
    text_encoder = Gemma2Model(
        Gemma2Config(
            head_dim=16,
            hidden_size=8,
            intermediate_size=64,
            max_position_embeddings=256,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=2,
            vocab_size=tokenizer.vocab_size,
            pad_token_id=0,
        )
    ).eval()
    torch.manual_seed(1)
    transformer = SanaVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=12,
        cross_attention_dim=24,
        caption_channels=8,
        mlp_ratio=2.5,
        attention_bias=False,
        sample_size=8,
        patch_size=(1, 2, 2),
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    torch.manual_seed(3)
    pipeline = SanaImageToVideoPipeline if i2v else SanaVideoPipeline
    pipe = pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=8.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_video_call_kwargs(**overrides) -> dict:
    """2 steps, 32×32, 5 frames → latents 2×4×4 → 8 video tokens per sample; prompts padded to 16 tokens, no
    instruction prefix."""
    kwargs = dict(
        height=32,
        width=32,
        frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=16,
        complex_human_instruction=[],
        use_resolution_binning=False,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------- Text-to-video SD


def make_text_to_video_sd(v2v: bool = False):
    """TextToVideoSDPipeline (or, with ``v2v``, VideoToVideoSDPipeline): a two-level UNet3DConditionModel whose
    spatial transformers' ``attn2`` attend to the CLIP text, per frame (the frames are folded into the batch); its
    temporal transformers attend over frames only."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        TextToVideoSDPipeline,
        UNet3DConditionModel,
        VideoToVideoSDPipeline,
    )

    from nag_guidance.testing.image import _clip_text, _sd_vae, clip_tokenizer

    tokenizer = clip_tokenizer()
    text_encoder = _clip_text(tokenizer)
    torch.manual_seed(1)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
        in_channels=4,
        out_channels=4,
        sample_size=8,
    ).eval()
    pipeline = VideoToVideoSDPipeline if v2v else TextToVideoSDPipeline
    pipe = pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_sd_vae(),
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(),  # ModelScope's
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_to_video_sd_call_kwargs(**overrides) -> dict:
    """2 steps, 16×16, 3 frames → latents 8×8 per frame; the video-to-video pipeline takes ``video`` and
    ``strength`` instead of the size and frame count."""
    kwargs = dict(height=16, width=16, num_frames=3, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    kwargs.update(overrides)
    return kwargs


def make_i2vgen_xl():
    """I2VGenXLPipeline: a two-level I2VGenXLUNet (spatial ``attn2`` over [CLIP text | image-latent tokens | image
    tokens], per frame), a CLIP text and a CLIP image encoder."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet

    from nag_guidance.testing.image import _clip_text, _sd_vae, clip_tokenizer

    tokenizer = clip_tokenizer()
    text_encoder = _clip_text(tokenizer)
    torch.manual_seed(1)
    unet = I2VGenXLUNet(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=32,
        attention_head_dim=4,
    ).eval()
    torch.manual_seed(4)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=8,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=224,  # the pipeline resizes the image to 224² for CLIP
            intermediate_size=16,
            patch_size=32,
        )
    ).eval()
    pipe = I2VGenXLPipeline(
        vae=_sd_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def i2vgen_xl_call_kwargs(**overrides) -> dict:
    """2 steps, 16×16, 3 frames → latents 8×8 per frame, from one input image. ``clip_skip=None``: the pipeline's
    default (1) reads ``text_encoder.text_model``, which transformers' CLIPTextModel no longer has."""
    kwargs = dict(
        image=tiny_image(),
        height=16,
        width=16,
        num_frames=3,
        num_inference_steps=2,
        guidance_scale=1.0,
        clip_skip=None,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------- LTX-Video


def make_ltx():
    """LTXPipeline with a one-block transformer (4 heads × 8) and a T5 text encoder."""
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel as LTXTransformer

    tokenizer = tiny_tokenizer(model_max_length=128)
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = LTXTransformer(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=2,
        caption_channels=32,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=(True, True, False, False),
        layers_per_block=(1, 1, 1, 1, 1),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_call_kwargs(**overrides) -> dict:
    """2 steps, 32×32, 9 frames → latents 2×8×8 → 128 video tokens; prompts padded to 16 tokens."""
    kwargs = dict(
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=16,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


# --------------------------------------------------------------------------------------------- LTX-2


def _gemma_text_encoder(vocab_size: int) -> Gemma3TextModel:
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=16,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    return Gemma3TextModel(config).eval()


def make_ltx2(modulated: bool = True):
    """LTX2Pipeline (video + audio). ``modulated=True`` is an LTX-2.3-style model: per-modality connector
    projections, no caption projection, gated attention and per-block, timestep-dependent modulation of the text
    K/V (``cross_attn_mod``). ``modulated=False`` is an LTX-2.0-style model (caption projections, no text K/V
    modulation). Connectors use no learnable registers, so prompt padding stays masked (as in diffusers' tests).
    """
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = tiny_tokenizer(model_max_length=64)
    torch.manual_seed(0)
    text_encoder = _gemma_text_encoder(tokenizer.vocab_size)
    caption_channels = text_encoder.config.hidden_size
    torch.manual_seed(1)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=2,
        caption_channels=caption_channels,
        rope_double_precision=False,
        rope_type="split",
        gated_attn=modulated,
        audio_gated_attn=modulated,
        cross_attn_mod=modulated,
        audio_cross_attn_mod=modulated,
        use_prompt_embeddings=not modulated,
    ).eval()
    torch.manual_seed(2)
    connectors = LTX2TextConnectors(
        caption_channels=caption_channels,
        text_proj_in_factor=text_encoder.config.num_hidden_layers + 1,
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=4 if modulated else 8,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_double_precision=False,
        rope_type="split",
        per_modality_projections=modulated,
        video_hidden_dim=16,
        audio_hidden_dim=8,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKLLTX2Video(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        layers_per_block=(1,),
        decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False),
        downsample_type=("spatial",),
        upsample_residual=(False,),
        upsample_factor=(1,),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    torch.manual_seed(4)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=8,
    ).eval()
    torch.manual_seed(5)
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins,
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    ).eval()
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx2_call_kwargs(**overrides) -> dict:
    """2 steps, 32×32, 9 frames, prompts padded to 16 tokens; every extra guidance pass (STG, modality isolation,
    rescale) off unless overridden, so ``guidance_scale=1`` means one transformer call per step."""
    kwargs = dict(
        height=32,
        width=32,
        num_frames=9,
        frame_rate=25.0,
        num_inference_steps=2,
        guidance_scale=1.0,
        stg_scale=0.0,
        modality_scale=1.0,
        guidance_rescale=0.0,
        audio_guidance_scale=1.0,
        audio_stg_scale=0.0,
        audio_modality_scale=1.0,
        audio_guidance_rescale=0.0,
        spatio_temporal_guidance_blocks=None,
        use_cross_timestep=False,
        max_sequence_length=16,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


def wan_prompt_embeds(pipe, prompt: str | list[str], max_sequence_length: int = 512) -> torch.Tensor:
    """Wan text embeddings exactly as the pipeline makes them (encoded, cut at the prompt length, zero-padded).

    Uses the text-to-video pipeline's encoder on any Wan pipeline: diffusers 0.42.1's
    ``WanImageToVideoPipeline`` calls ``ftfy`` without checking that it is installed, so its own text path
    fails without that optional package.
    """
    from diffusers import WanPipeline

    return WanPipeline._get_t5_prompt_embeds(pipe, prompt=prompt, max_sequence_length=max_sequence_length)
