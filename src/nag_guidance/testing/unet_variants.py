"""Tiny, random, offline pools of components for the pipelines around SD's and SDXL's ``UNet2DConditionModel``
(ControlNet, ControlNet-Union, T2I-Adapter, PAG, InstructPix2Pix, LCM, AnimateDiff / PIA ...), built with
``testing.assemble``.

Sizes follow ``testing.image``: 16×16 images, a VAE that halves them (8×8 latents), CLIP text of width 32 (SD)
or 32 + 32 (SDXL). ControlNets and adapters downsample their 16×16 condition image to the latents' 8×8.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from nag_guidance.testing.image import _clip_text, clip_tokenizer

_UNET = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    sample_size=8,
    out_channels=4,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=4,
)
_SD_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))
_SDXL_UNET = dict(
    block_out_channels=(8, 16),
    layers_per_block=1,
    sample_size=8,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
    cross_attention_dim=64,
    norm_num_groups=4,
)


def sd_vae(channels: int = 3) -> torch.nn.Module:
    """SD's tiny VAE; ``channels`` = 4 for LDM3D's RGB + depth images."""
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(
        block_out_channels=[8, 8],
        in_channels=channels,
        out_channels=channels,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    ).eval()


def sd_unet(in_channels: int = 4, **config: Any) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        in_channels=in_channels, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **{**_UNET, **_SD_BLOCKS, **config}
    ).eval()


def sdxl_unet(in_channels: int = 4) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        in_channels=in_channels, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **_SDXL_UNET
    ).eval()


def sd_controlnet() -> torch.nn.Module:
    from diffusers import ControlNetModel

    torch.manual_seed(5)
    config = {k: v for k, v in _UNET.items() if k not in ("sample_size", "out_channels")}
    return ControlNetModel(conditioning_embedding_out_channels=(4, 8), in_channels=4, **config, **_SD_BLOCKS).eval()


def sdxl_controlnet(union: bool = False) -> torch.nn.Module:
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(5)
    config = {k: v for k, v in _SDXL_UNET.items() if k not in ("sample_size", "out_channels")}
    if union:  # its control-type transformer is as wide as the first block
        config.update(num_trans_channel=8, num_trans_head=2, num_proj_channel=8)
    cls = ControlNetUnionModel if union else ControlNetModel
    return cls(conditioning_embedding_out_channels=(4, 8), in_channels=4, **config).eval()


def sd_adapter(kind: str = "full_adapter") -> torch.nn.Module:
    from diffusers import T2IAdapter

    torch.manual_seed(6)
    return T2IAdapter(
        in_channels=3,
        channels=[8, 16],
        num_res_blocks=1,
        downscale_factor=4 if kind.endswith("xl") else 2,
        adapter_type=kind,
    ).eval()


def motion_adapter() -> torch.nn.Module:
    from diffusers import MotionAdapter

    torch.manual_seed(7)
    return MotionAdapter(
        block_out_channels=(8, 16),
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    ).eval()


def scheduler(name: str = "EulerDiscreteScheduler", **config: Any) -> Callable[[], Any]:
    """A factory of the diffusers scheduler class ``name`` (the pipelines that insist on one)."""

    def make() -> Any:
        import diffusers

        return getattr(diffusers, name)(steps_offset=1, **config)

    return make


@functools.cache
def _tokenizer() -> Any:
    return clip_tokenizer()


def sd_pool(**factories: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """The SD 1.x layout: one CLIP encoder, a 4-channel UNet, Euler; ``factories`` replace or add components."""
    pool: dict[str, Callable[[], Any]] = dict(
        vae=sd_vae,
        text_encoder=lambda: _clip_text(_tokenizer()),
        tokenizer=_tokenizer,
        unet=sd_unet,
        scheduler=scheduler(),
        controlnet=sd_controlnet,
        adapter=sd_adapter,
        motion_adapter=motion_adapter,
        inverse_scheduler=scheduler("DDIMInverseScheduler"),
    )
    return {**pool, **factories}


def sdxl_pool(**factories: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """The SDXL layout: two CLIP encoders, a text_time UNet, Euler; ``factories`` replace or add components."""
    pool: dict[str, Callable[[], Any]] = dict(
        vae=sd_vae,
        text_encoder=lambda: _clip_text(_tokenizer(), seed=0),
        text_encoder_2=lambda: _clip_text(_tokenizer(), projection=True, seed=2),
        tokenizer=_tokenizer,
        tokenizer_2=_tokenizer,
        unet=sdxl_unet,
        scheduler=scheduler(),
        controlnet=sdxl_controlnet,
        adapter=lambda: sd_adapter("full_adapter_xl"),
        motion_adapter=motion_adapter,
    )
    return {**pool, **factories}


def condition_image(seed: int = 0, size: int = 16) -> torch.Tensor:
    """A (1, 3, size, size) image in [0, 1] (control images, init images)."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def mask_image(size: int = 16) -> torch.Tensor:
    """A (1, 1, size, size) mask: the right half repainted."""
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 2 :] = 1.0
    return mask
