"""Tiny, random, offline image pipelines (SD 1.5, SDXL, PixArt-α/Σ, SANA) for the NAG tests.

Every component is built in memory from fixed seeds (sizes from diffusers' own test configurations): no
download, no file. Tokenizers come from in-memory vocabularies.
``*_call_kwargs`` give call arguments that decode nothing (``output_type="latent"``) and take 2 steps.
"""

from __future__ import annotations

import string

import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Config,
    Gemma2Model,
)

from nag_guidance.testing.video import _t5_encoder, tiny_tokenizer


def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """Character-level CLIP tokenizer (no merges): every letter is a token, so prompt lengths vary."""
    symbols = list(string.ascii_lowercase + string.digits + ",.!?-'")
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


def _clip_text(tokenizer: CLIPTokenizer, hidden: int = 32, projection: bool = False, seed: int = 0):
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=32,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _sd_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=[8, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    ).eval()


def make_sd():
    """StableDiffusionPipeline: UNet with cross-attention at two resolutions (latent 8×8 for 16×16 images)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    text_encoder = _clip_text(tokenizer)
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=_sd_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sdxl_unet(seed: int, time_ids: int, text_width: int):
    """The tiny text_time UNet of SDXL: ``time_ids`` of 8 channels each (6; the refiner's 5 with the aesthetic
    score) beside the 32-wide pooled text; cross attention to text ``text_width`` wide."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * 8 + 32,
        cross_attention_dim=text_width,
        norm_num_groups=4,
    ).eval()


def make_sdxl(img2img: bool = False):
    """StableDiffusionXL(Img2Img)Pipeline with two CLIP encoders and a text_time UNet."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    tokenizer = clip_tokenizer()
    unet = _sdxl_unet(seed=1, time_ids=6, text_width=64)
    cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
    pipe = cls(
        vae=_sd_vae(),
        text_encoder=_clip_text(tokenizer, seed=0),
        text_encoder_2=_clip_text(tokenizer, projection=True, seed=2),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sdxl_refiner(base):
    """The SDXL refiner layout over ``base``'s second text encoder and VAE: no first encoder or tokenizer, a UNet
    that takes encoder 2's text alone and aesthetic-score time ids (the "mixture of denoisers" pattern)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    unet = _sdxl_unet(seed=4, time_ids=5, text_width=32)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=base.scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (latent 8×8 → 64 tokens at the first UNet level), no CFG, latent output."""
    kwargs = dict(height=16, width=16, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    kwargs.update(overrides)
    return kwargs


def make_pixart(sigma: bool = False):
    """PixArtAlphaPipeline / PixArtSigmaPipeline with a two-block adaLN-single DiT and a T5 encoder."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = tiny_tokenizer(model_max_length=32)
    torch.manual_seed(0)
    text_encoder = _t5_encoder(tokenizer.vocab_size)
    torch.manual_seed(1)
    transformer = PixArtTransformer2DModel(
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
    ).eval()
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(
        transformer=transformer,
        vae=_sd_vae(),
        scheduler=DDIMScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixart_call_kwargs(**overrides) -> dict:
    """2 steps at 16×16 (latent 8×8, patch 2 → 16 image tokens), prompts padded to 16 tokens."""
    kwargs = dict(
        height=16,
        width=16,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=16,
        use_resolution_binning=False,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs


def make_sana():
    """SanaPipeline: one linear-attention block with cross-attention, a Gemma-2 text encoder."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

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
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=8,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=[1, 1],
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    pipe = SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_call_kwargs(**overrides) -> dict:
    """2 steps at 32×32 (latent 16×16 with this VAE's 2× compression → 256 image tokens), prompts padded to 16."""
    kwargs = dict(
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=16,
        complex_human_instruction=None,
        use_resolution_binning=False,
        output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs
