"""Tiny, random, offline pools of components for the pipelines around the joint- and cross-attention
transformers already guided (Flux ControlNet / Control / Fill, SD3 ControlNet and PAG, Sana and PixArt-Σ PAG ...),
built with ``testing.assemble`` from the components of the families' own tiny pipelines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def pool_of(make: Callable[[], Any], **factories: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """The components of the tiny pipeline ``make`` builds, as a pool; ``factories`` replace or add components
    (called with that pipeline's components, so a ControlNet can mirror its transformer)."""
    components = make().components
    pool: dict[str, Callable[[], Any]] = {name: (lambda value=value: value) for name, value in components.items()}
    pool.update({name: (lambda f=f: f(components)) for name, f in factories.items()})
    return pool


def flux_transformer(in_channels: int) -> Callable[[dict], torch.nn.Module]:
    """Flux's tiny transformer taking ``in_channels`` packed channels (Control: latents + control image, Fill:
    + masked image + mask), still predicting the 16 of the latents."""

    def make(components: dict) -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        config = {k: v for k, v in components["transformer"].config.items() if not k.startswith("_")}
        config.update(in_channels=in_channels, out_channels=16)
        torch.manual_seed(1)
        return FluxTransformer2DModel(**config).eval()

    return make


def flux_controlnet(components: dict) -> torch.nn.Module:
    from diffusers import FluxControlNetModel

    config = components["transformer"].config
    torch.manual_seed(5)
    return FluxControlNetModel(
        patch_size=1,
        in_channels=config.in_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim,
        pooled_projection_dim=config.pooled_projection_dim,
        guidance_embeds=config.guidance_embeds,
        axes_dims_rope=config.axes_dims_rope,
    ).eval()


def sd3_controlnet(components: dict) -> torch.nn.Module:
    from diffusers import SD3ControlNetModel

    config = components["transformer"].config
    torch.manual_seed(5)
    return SD3ControlNetModel(
        sample_size=config.sample_size,
        patch_size=config.patch_size,
        in_channels=config.in_channels,
        num_layers=1,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim,
        caption_projection_dim=config.caption_projection_dim,
        pooled_projection_dim=config.pooled_projection_dim,
        out_channels=config.out_channels,
    ).eval()
