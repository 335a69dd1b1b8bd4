"""What `nag bench` times. Every family on its tiny test pipeline (``nag_guidance.testing``), where the shapes are
too small for the costs to mean much but every code path runs; and, for most families, a "realistic-shape" pipeline:
the real token counts at the real head width, with few heads and few blocks so that a step takes about a second on a
CPU. The realistic denoisers replace the tiny one inside the tiny pipeline, whose text
encoders stay tiny (their time is not measured; only their output width differs from the real models').

``FULL_SIZE`` (``nag bench --full-size``, for a GPU): the real FLUX.1-dev, SD3.5-large, SDXL and Wan 2.1 1.3B
denoiser architectures with random weights, created directly on the target device in the target dtype, at the real
token counts; ``FULL_SIZE_QUICK`` builds the same four scaled down, through the same code path, for a CPU check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from nag_guidance.testing import image as fi
from nag_guidance.testing import joint as fj
from nag_guidance.testing import video as fv


@dataclass(frozen=True)
class BenchConfig:
    """One pipeline to time. ``call`` holds the call arguments besides the prompt, the step count and the
    condition's own ones; ``denoiser`` and ``shape`` say in words exactly what was built and fed."""

    family: str
    kind: str  # "tiny", "realistic" or "full-size"
    build: Callable[[], Any]
    call: dict[str, Any]
    denoiser: str
    shape: str = ""
    repeats: int | None = None  # more than the run's default, for the headline shapes
    build_on: Callable[[torch.device, torch.dtype], Any] | None = None  # full-size: weights made on the device

    def on(self, device: str | torch.device, dtype: torch.dtype) -> BenchConfig:
        """This config with ``build`` creating the denoiser's weights on ``device`` in ``dtype`` (for the configs
        that have ``build_on``; the others are returned as they are)."""
        if self.build_on is None:
            return self
        return replace(self, build=partial(self.build_on, torch.device(device), dtype))


def _name(make: Callable) -> str:
    if isinstance(make, partial):
        options = ", ".join(f"{key}={value!r}" for key, value in make.keywords.items())
        return f"{make.func.__name__}({options})"
    return f"{make.__name__}()"


def _tiny(family: str, make: Callable[[], Any], call_kwargs: Callable[..., dict]) -> BenchConfig:
    call = call_kwargs()
    call.pop("num_inference_steps")
    return BenchConfig(family, "tiny", make, call, f"`{_name(make)}`, called with `{call_kwargs.__name__}()`")


TINY: tuple[BenchConfig, ...] = (
    _tiny("sd", fi.make_sd, fi.image_call_kwargs),
    _tiny("sdxl", fi.make_sdxl, fi.image_call_kwargs),
    _tiny("pixart", partial(fi.make_pixart, sigma=True), fi.pixart_call_kwargs),
    _tiny("sana", fi.make_sana, fi.sana_call_kwargs),
    _tiny("wan", fv.make_wan_t2v, fv.wan_call_kwargs),
    _tiny("ltx", fv.make_ltx, fv.ltx_call_kwargs),
    _tiny("ltx2", fv.make_ltx2, fv.ltx2_call_kwargs),
    _tiny("sd3", fj.make_sd35, fj.sd3_call_kwargs),
    _tiny("flux", fj.make_flux, fj.flux_call_kwargs),
    _tiny("flux-kontext", fj.make_flux_kontext, fj.flux_kontext_call_kwargs),
    _tiny("chroma", fj.make_chroma, fj.chroma_call_kwargs),
    _tiny("qwen-image", fj.make_qwenimage, fj.qwenimage_call_kwargs),
    _tiny("hunyuan-video", fj.make_hunyuan_video, fj.hunyuan_video_call_kwargs),
    _tiny("flux2", fj.make_flux2_klein, fj.flux2_klein_call_kwargs),
    _tiny("z-image", fj.make_zimage, fj.zimage_call_kwargs),
    _tiny("cogvideox", fj.make_cogvideox, fj.cogvideox_call_kwargs),
    _tiny("lumina2", fj.make_lumina2, fj.lumina2_call_kwargs),
    _tiny("hidream", fj.make_hidream, fj.hidream_call_kwargs),
    _tiny("wan-vace", fv.make_wan_vace, fv.wan_call_kwargs),
    _tiny("wan-animate", fv.make_wan_animate, fv.wan_animate_call_kwargs),
    _tiny("chronoedit", fv.make_chronoedit, fv.chronoedit_call_kwargs),
    _tiny("skyreels-v2", partial(fv.make_skyreels_v2, kind="df"), fv.wan_call_kwargs),
    _tiny("allegro", fv.make_allegro, fv.allegro_call_kwargs),
    _tiny("latte", fv.make_latte, fv.latte_call_kwargs),
    _tiny("sana-video", fv.make_sana_video, fv.sana_video_call_kwargs),
    _tiny("text-to-video-sd", fv.make_text_to_video_sd, fv.text_to_video_sd_call_kwargs),
)


def _swap_denoiser(
    make: Callable[[], Any],
    attribute: str,
    cls_name: str,
    config: dict[str, Any],
    prepare: Callable[[torch.nn.Module], None] | None,
) -> Any:
    import diffusers

    pipe = make()
    torch.manual_seed(0)
    model = getattr(diffusers, cls_name)(**config).eval()
    if prepare is not None:
        prepare(model)
    pipe.register_modules(**{attribute: model})
    return pipe


def _realistic(
    family: str,
    make: Callable[[], Any],
    denoiser: tuple[str, str, dict[str, Any]],
    call: dict[str, Any],
    shape: str,
    real: str,
    prepare: Callable[[torch.nn.Module], None] | None = None,
    repeats: int | None = None,
) -> BenchConfig:
    attribute, cls_name, config = denoiser
    call = dict(call)
    call.pop("num_inference_steps")
    options = ", ".join(f"{key}={value!r}" for key, value in config.items())
    described = f"`{cls_name}({options})` in place of the denoiser of `{_name(make)}`; the real model: {real}"
    build = partial(_swap_denoiser, make, attribute, cls_name, config, prepare)
    return BenchConfig(family, "realistic", build, call, described, shape, repeats)


def _fill_pad_tokens(model: torch.nn.Module) -> None:
    """Z-Image creates its pad tokens with ``torch.empty``; fixed values keep garbage (NaN, denormals) out."""
    with torch.no_grad():
        model.x_pad_token.fill_(1.0)
        model.cap_pad_token.fill_(1.0)


# The real head widths; heads and blocks cut so that the transformers are 256-288 wide, with 1-2 blocks of a kind.
REALISTIC: tuple[BenchConfig, ...] = (
    _realistic(
        "flux",
        fj.make_flux,
        (
            "transformer",
            "FluxTransformer2DModel",
            dict(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=2,
                attention_head_dim=128,
                num_attention_heads=2,
                joint_attention_dim=32,
                pooled_projection_dim=32,
                guidance_embeds=True,
                axes_dims_rope=(16, 56, 56),
            ),
        ),
        fj.flux_call_kwargs(height=128, width=128, max_sequence_length=512),
        "4096 image tokens (128×128 latents packed 2×2, as FLUX at 1024²) + 512 T5 tokens",
        "FLUX.1-dev, 19 double + 38 single blocks, 24 heads × 128 (width 3072)",
        repeats=5,
    ),
    _realistic(
        "sd3",
        fj.make_sd3,
        (
            "transformer",
            "SD3Transformer2DModel",
            dict(
                sample_size=128,
                patch_size=2,
                in_channels=16,
                num_layers=2,
                attention_head_dim=64,
                num_attention_heads=4,
                joint_attention_dim=32,
                caption_projection_dim=256,
                pooled_projection_dim=64,
                out_channels=16,
                pos_embed_max_size=192,
                qk_norm="rms_norm",
            ),
        ),
        fj.sd3_call_kwargs(height=128, width=128, max_sequence_length=256),
        "4096 image tokens (128×128 latents, patch 2, as SD3.5 at 1024²) + 77 CLIP + 256 T5 tokens",
        "SD3.5-large, 38 joint blocks, 38 heads × 64 (width 2432), RMS QK-norm",
        repeats=5,
    ),
    _realistic(
        "qwen-image",
        fj.make_qwenimage,
        (
            "transformer",
            "QwenImageTransformer2DModel",
            dict(
                patch_size=2,
                in_channels=64,
                out_channels=16,
                num_layers=2,
                attention_head_dim=128,
                num_attention_heads=2,
                joint_attention_dim=16,
                axes_dims_rope=(16, 56, 56),
            ),
        ),
        fj.qwenimage_call_kwargs(height=512, width=512, max_sequence_length=512),
        "4096 image tokens (128×128 latents packed 2×2, as Qwen-Image at 1024²; this VAE is 4×) + the prompt's "
        "Qwen2.5-VL tokens (unpadded)",
        "Qwen-Image, 60 dual-stream blocks, 24 heads × 128 (width 3072)",
    ),
    _realistic(
        "wan",
        fv.make_wan_t2v,
        (
            "transformer",
            "WanTransformer3DModel",
            dict(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=128,
                in_channels=16,
                out_channels=16,
                text_dim=32,
                freq_dim=256,
                ffn_dim=1536,
                num_layers=2,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
            ),
        ),
        fv.wan_call_kwargs(height=480, width=832, num_frames=9),
        "4680 video tokens (9 frames at 832×480 → 3×60×104 latents, patch 1×2×2) + 512 umT5 tokens",
        "Wan 2.1 1.3B, 30 blocks, 12 heads × 128 (width 1536), FFN 8960",
    ),
    _realistic(
        "sdxl",
        fi.make_sdxl,
        (
            "unet",
            "UNet2DConditionModel",
            dict(
                sample_size=128,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(64, 128, 256),
                layers_per_block=1,
                transformer_layers_per_block=(1, 1, 2),
                attention_head_dim=(1, 2, 4),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80,
                cross_attention_dim=64,
            ),
        ),
        fi.image_call_kwargs(height=256, width=256),
        "128×128 latents (as SDXL at 1024²; this VAE is 2×): attention over 4096 and 1024 tokens; 77 CLIP tokens",
        "SDXL, channels (320, 640, 1280), 2 resnets and (0, 2, 10) transformer blocks per level, heads of 64",
    ),
    _realistic(
        "sd",
        fi.make_sd,
        (
            "unet",
            "UNet2DConditionModel",
            dict(
                sample_size=64,
                in_channels=4,
                out_channels=4,
                block_out_channels=(80, 160, 320, 320),
                layers_per_block=1,
                attention_head_dim=2,
                norm_num_groups=16,
                cross_attention_dim=32,
            ),
        ),
        fi.image_call_kwargs(height=128, width=128),
        "64×64 latents (as SD 1.5 at 512²; this VAE is 2×): attention over 4096, 1024 and 256 tokens; 77 CLIP tokens",
        "SD 1.5, channels (320, 640, 1280, 1280), 2 resnets and 1 transformer block per level, 8 heads",
    ),
    _realistic(
        "pixart",
        partial(fi.make_pixart, sigma=True),
        (
            "transformer",
            "PixArtTransformer2DModel",
            dict(
                sample_size=128,
                num_layers=2,
                patch_size=2,
                attention_head_dim=72,
                num_attention_heads=4,
                caption_channels=32,
                in_channels=4,
                out_channels=8,
                cross_attention_dim=288,
                interpolation_scale=2,
                use_additional_conditions=False,
            ),
        ),
        fi.pixart_call_kwargs(height=256, width=256, max_sequence_length=300),
        "4096 image tokens (128×128 latents, patch 2, as PixArt-Σ at 1024²; this VAE is 2×) + 300 T5 tokens",
        "PixArt-Σ, 28 blocks, 16 heads × 72 (width 1152)",
    ),
    _realistic(
        "sana",
        fi.make_sana,
        (
            "transformer",
            "SanaTransformer2DModel",
            dict(
                in_channels=32,
                out_channels=32,
                num_attention_heads=8,
                attention_head_dim=32,
                num_layers=2,
                num_cross_attention_heads=2,
                cross_attention_head_dim=128,
                cross_attention_dim=256,
                caption_channels=8,
                sample_size=32,
            ),
        ),
        fi.sana_call_kwargs(height=64, width=64, max_sequence_length=300),
        "1024 image tokens (32×32 latents, as SANA's 32× DC-AE at 1024²; this one is 2×) + 300 Gemma tokens",
        "SANA 1.6B, 20 blocks, 70 heads × 32 (width 2240), cross-attention 20 heads × 112",
    ),
    _realistic(
        "chroma",
        fj.make_chroma,
        (
            "transformer",
            "ChromaTransformer2DModel",
            dict(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=2,
                attention_head_dim=128,
                num_attention_heads=2,
                joint_attention_dim=32,
                axes_dims_rope=(16, 56, 56),
                approximator_num_channels=64,
                approximator_hidden_dim=256,
                approximator_layers=1,
            ),
        ),
        fj.chroma_call_kwargs(height=128, width=128, max_sequence_length=512),
        "4096 image tokens (128×128 latents packed 2×2, as Chroma at 1024²) + 512 T5 tokens (padding masked)",
        "Chroma, 19 double + 38 single blocks, 24 heads × 128 (width 3072)",
    ),
    _realistic(
        "flux2",
        fj.make_flux2_klein,
        (
            "transformer",
            "Flux2Transformer2DModel",
            dict(
                patch_size=1,
                in_channels=4,
                num_layers=1,
                num_single_layers=2,
                attention_head_dim=128,
                num_attention_heads=2,
                joint_attention_dim=48,
                axes_dims_rope=(32, 32, 32, 32),
                guidance_embeds=False,
            ),
        ),
        fj.flux2_klein_call_kwargs(height=128, width=128, max_sequence_length=512),
        "4096 image tokens (128×128 latents packed 2×2, as FLUX.2 at 1024²; 4 latent channels, as this VAE's "
        "batch-norm statistics require) + 512 Qwen3 tokens",
        "FLUX.2 (diffusers' defaults): 8 double + 48 single blocks, 48 heads × 128 (width 6144)",
    ),
    _realistic(
        "z-image",
        fj.make_zimage,
        (
            "transformer",
            "ZImageTransformer2DModel",
            dict(
                in_channels=16,
                dim=256,
                n_layers=2,
                n_refiner_layers=1,
                n_heads=2,
                n_kv_heads=2,
                cap_feat_dim=16,
                axes_dims=[32, 48, 48],
                axes_lens=[1024, 512, 512],
            ),
        ),
        fj.zimage_call_kwargs(height=256, width=256, max_sequence_length=512),
        "4096 image tokens (128×128 latents, patch 2, as Z-Image at 1024²; this VAE is 2×) + the prompt's Qwen3 "
        "tokens (unpadded)",
        "Z-Image-Turbo, 30 blocks + 2 refiner blocks per stream, 30 heads × 128 (width 3840)",
        prepare=_fill_pad_tokens,
    ),
    _realistic(
        "hunyuan-video",
        fj.make_hunyuan_video,
        (
            "transformer",
            "HunyuanVideoTransformer3DModel",
            dict(
                in_channels=16,
                out_channels=16,
                num_attention_heads=2,
                attention_head_dim=128,
                num_layers=1,
                num_single_layers=2,
                num_refiner_layers=1,
                text_embed_dim=16,
                pooled_projection_dim=8,
                rope_axes_dim=(16, 56, 56),
            ),
        ),
        fj.hunyuan_video_call_kwargs(height=544, width=960, num_frames=5, max_sequence_length=256),
        "4080 video tokens (5 frames at 960×544 → 2×68×120 latents, patch 1×2×2) + 256 Llama tokens (padding masked)",
        "HunyuanVideo, 20 double + 40 single blocks, 24 heads × 128 (width 3072)",
    ),
    _realistic(
        "ltx",
        fv.make_ltx,
        (
            "transformer",
            "LTXVideoTransformer3DModel",
            dict(
                in_channels=128,
                out_channels=128,
                num_attention_heads=4,
                attention_head_dim=64,
                cross_attention_dim=256,
                num_layers=2,
                caption_channels=32,
            ),
        ),
        fv.ltx_call_kwargs(height=64, width=96, num_frames=25, max_sequence_length=128),
        "2688 video tokens (7×16×24 latents, as LTX-Video's 32×/8× VAE at 768×512 and 49 frames; this VAE is 4×/4×, "
        "so 96×64 and 25 frames) + 128 T5 tokens (padding masked)",
        "LTX-Video 2B, 28 blocks, 32 heads × 64 (width 2048)",
    ),
)


# --------------------------------------------------------------------------------------------- full size


@contextmanager
def _creating_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New tensors go straight to ``device`` in ``dtype`` (a 12B-parameter model never exists in fp32 on the CPU).
    Buffers that a model computes with numpy (SD3's positional table) still land on the CPU; the bench's
    ``.to(device, dtype)`` moves them."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _swap_denoiser_on(
    make: Callable[[], Any],
    attribute: str,
    cls_name: str,
    config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> Any:
    import diffusers

    pipe = make()  # the tiny pipeline, on the CPU in fp32: its tiny denoiser is dropped below
    pipe.register_modules(**{attribute: None})
    torch.manual_seed(0)
    with _creating_on(device, dtype):
        model = getattr(diffusers, cls_name)(**config).eval()
    model.requires_grad_(False)
    pipe.register_modules(**{attribute: model})
    return pipe


def _not_without_a_device() -> Any:
    raise TypeError("a full-size config is built on its device: use config.on(device, dtype).build()")


def _options(config: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in config.items())


def _full_size(
    family: str,
    make: Callable[[], Any],
    denoiser: tuple[str, str, dict[str, Any]],
    call: dict[str, Any],
    shape: str,
    real: str,
    scaled_from: dict[str, Any] | None = None,
) -> BenchConfig:
    """A full-size config, or with ``scaled_from`` (the full-size denoiser config) its scaled-down ``--quick`` twin."""
    attribute, cls_name, config = denoiser
    call = dict(call)
    call.pop("num_inference_steps")
    described = f"`{cls_name}({_options(config)})`, random weights"
    if scaled_from is not None:
        described += f", scaled down (`--quick`) from the full-size `{cls_name}({_options(scaled_from)})`"
    described += f", in place of the denoiser of `{_name(make)}`; the real model: {real}"
    build_on = partial(_swap_denoiser_on, make, attribute, cls_name, config)
    return BenchConfig(family, "full-size", _not_without_a_device, call, described, shape, build_on=build_on)


FULL_SIZE_TARGETS: dict[str, float] = {"flux": 1.15, "sd3": 1.12, "sdxl": 1.10, "wan": 1.08}
"""The NAG cost targets (NAG step / unguided step) of the full-size denoisers on a GPU."""

_FLUX_FULL = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
_SD35_LARGE_FULL = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=32,
    caption_projection_dim=2432,
    pooled_projection_dim=64,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
_SDXL_BLOCKS = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
_SDXL_FULL = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    **_SDXL_BLOCKS,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=6 * 256 + 32,  # the tiny CLIP-G's pooled width is 32
    cross_attention_dim=64,  # the tiny CLIP-L and CLIP-G, 32 + 32
)
_WAN_FULL = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=1024,
)
_REAL = {
    "flux": "FLUX.1-dev, 19 double + 38 single blocks, 24 heads × 128 (width 3072), 12B parameters",
    "sd3": "SD3.5-large, 38 joint blocks, 38 heads × 64 (width 2432), RMS QK-norm, 8B parameters",
    "sdxl": "SDXL, channels (320, 640, 1280), 2 resnets and (0, 2, 10) transformer blocks per level, heads of 64, "
    "2.6B parameters (2.2B here: the cross-attention keys and values read the tiny encoders' 64-wide text, not 2048)",
    "wan": "Wan 2.1 1.3B, 30 blocks, 12 heads × 128 (width 1536), FFN 8960",
}

FULL_SIZE: tuple[BenchConfig, ...] = (
    _full_size(
        "flux",
        fj.make_flux,
        ("transformer", "FluxTransformer2DModel", _FLUX_FULL),
        fj.flux_call_kwargs(height=128, width=128, max_sequence_length=512),
        "4096 image tokens (128×128 latents packed 2×2, as FLUX at 1024²) + 512 T5 tokens",
        _REAL["flux"],
    ),
    _full_size(
        "sd3",
        fj.make_sd3,
        ("transformer", "SD3Transformer2DModel", _SD35_LARGE_FULL),
        fj.sd3_call_kwargs(height=128, width=128, max_sequence_length=256),
        "4096 image tokens (128×128 latents, patch 2, as SD3.5 at 1024²) + 77 CLIP + 256 T5 tokens",
        _REAL["sd3"],
    ),
    _full_size(
        "sdxl",
        fi.make_sdxl,
        ("unet", "UNet2DConditionModel", _SDXL_FULL),
        fi.image_call_kwargs(height=256, width=256),
        "128×128 latents (as SDXL at 1024²; this VAE is 2×): attention over 4096 and 1024 tokens; 77 CLIP tokens",
        _REAL["sdxl"],
    ),
    _full_size(
        "wan",
        fv.make_wan_t2v,
        ("transformer", "WanTransformer3DModel", _WAN_FULL),
        fv.wan_call_kwargs(height=480, width=832, num_frames=33),
        "14040 video tokens (33 frames at 832×480 → 9×60×104 latents, patch 1×2×2) + 512 umT5 tokens",
        _REAL["wan"],
    ),
)

# The same four, few blocks, few and narrow heads, small latents: seconds on a CPU (`nag bench --quick --full-size`).
FULL_SIZE_QUICK: tuple[BenchConfig, ...] = (
    _full_size(
        "flux",
        fj.make_flux,
        (
            "transformer",
            "FluxTransformer2DModel",
            {
                **_FLUX_FULL,
                "num_layers": 1,
                "num_single_layers": 2,
                "attention_head_dim": 32,
                "num_attention_heads": 2,
                "axes_dims_rope": (8, 12, 12),
            },
        ),
        fj.flux_call_kwargs(height=32, width=32, max_sequence_length=64),
        "256 image tokens (32×32 latents packed 2×2) + 64 T5 tokens",
        _REAL["flux"],
        scaled_from=_FLUX_FULL,
    ),
    _full_size(
        "sd3",
        fj.make_sd3,
        (
            "transformer",
            "SD3Transformer2DModel",
            {
                **_SD35_LARGE_FULL,
                "sample_size": 32,
                "num_layers": 2,
                "attention_head_dim": 32,
                "num_attention_heads": 2,
                "caption_projection_dim": 64,
                "pos_embed_max_size": 32,
            },
        ),
        fj.sd3_call_kwargs(height=32, width=32, max_sequence_length=64),
        "256 image tokens (32×32 latents, patch 2) + 77 CLIP + 64 T5 tokens",
        _REAL["sd3"],
        scaled_from=_SD35_LARGE_FULL,
    ),
    _full_size(
        "sdxl",
        fi.make_sdxl,
        (
            "unet",
            "UNet2DConditionModel",
            {
                **_SDXL_FULL,
                "sample_size": 32,
                "block_out_channels": (32, 64, 128),
                "layers_per_block": 1,
                "transformer_layers_per_block": (1, 1, 2),
                "attention_head_dim": (1, 2, 4),
                "addition_time_embed_dim": 8,
                "projection_class_embeddings_input_dim": 6 * 8 + 32,
            },
        ),
        fi.image_call_kwargs(height=64, width=64),
        "32×32 latents (this VAE is 2×): attention over 1024 and 256 tokens; 77 CLIP tokens",
        _REAL["sdxl"],
        scaled_from=_SDXL_FULL,
    ),
    _full_size(
        "wan",
        fv.make_wan_t2v,
        (
            "transformer",
            "WanTransformer3DModel",
            {
                **_WAN_FULL,
                "num_attention_heads": 2,
                "attention_head_dim": 32,
                "freq_dim": 32,
                "ffn_dim": 128,
                "num_layers": 2,
            },
        ),
        fv.wan_call_kwargs(height=128, width=128, num_frames=9),
        "192 video tokens (9 frames at 128×128 → 3×16×16 latents, patch 1×2×2) + 512 umT5 tokens",
        _REAL["wan"],
        scaled_from=_WAN_FULL,
    ),
)
