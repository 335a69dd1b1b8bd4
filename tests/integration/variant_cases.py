"""The pipelines around an already-guided denoiser (ControlNet, PAG, InstructPix2Pix, AnimateDiff ...): how to
build each tiny and what it takes at call time, and how its batch lays out its branches.

``Variant.cond`` says, independently of the package, which rows of a denoiser batch of B rows for N prompt rows
carry the prompt; the contract test checks the package's guided rows against it through the float64 reference.
``CONTRACT`` holds one pipeline per branch structure of the UNet families (the reference is the cross-attention
one); ``VARIANTS`` every pipeline run with NAG on (the smoke rows), ``JOINT_VARIANTS`` those around the
transformers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.testing import unet_variants as uv
from nag_guidance.testing.assemble import assemble


def _cfg_cond(batch: int, prompts: int) -> slice:
    """diffusers' CFG batch [uncond, cond] (or cond alone)."""
    return slice(batch - prompts, batch)


def _pag_cond(batch: int, prompts: int) -> slice:
    """PAG with CFG: [uncond, cond, perturbed]."""
    return slice(prompts, 2 * prompts)


def _first(batch: int, prompts: int) -> slice:
    """InstructPix2Pix: [text + image, image only, uncond]."""
    return slice(0, prompts)


@dataclass(frozen=True)
class Variant:
    pipeline: str
    pool: Callable[[], dict[str, Callable[[], Any]]]
    inputs: Callable[[], dict[str, Any]] = dict
    given: Callable[[], dict[str, Any]] = dict  # components that replace the pool's
    family: str = "sd"
    cond: Callable[[int, int], slice] = _cfg_cond
    denoiser: str = "unet"
    steps: int = 2
    cfg: dict = field(default_factory=lambda: {"guidance_scale": 5.0})
    rows_per_prompt: int = 1  # denoiser rows per prompt in each branch (AnimateDiff: one per frame)
    base: Callable[[], dict[str, Any]] = lambda: dict(height=16, width=16, output_type="latent")
    label: str = ""  # where one pipeline is checked in two layouts

    @property
    def id(self) -> str:
        return f"{self.pipeline}-{self.label}" if self.label else self.pipeline

    def make(self) -> Any:
        import diffusers

        return assemble(getattr(diffusers, self.pipeline), self.pool(), **self.given())

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """The call's arguments (no height / width where the size comes from the input image)."""
        import diffusers

        call = {**self.base(), "num_inference_steps": self.steps, **self.cfg}
        takes = inspect.signature(getattr(diffusers, self.pipeline).__call__).parameters
        call = {k: v for k, v in call.items() if k in takes}
        return {**call, **self.inputs(), **overrides}


def _control() -> dict[str, Any]:
    return {"image": uv.condition_image(1)}


def _init() -> dict[str, Any]:
    return {"image": uv.condition_image(2), "strength": 0.99}


def _init_control() -> dict[str, Any]:
    return {**_init(), "control_image": uv.condition_image(1)}


def _inpaint() -> dict[str, Any]:
    return {**_init(), "mask_image": uv.mask_image()}


def _inpaint_control() -> dict[str, Any]:
    return {**_inpaint(), "control_image": uv.condition_image(1)}


def _union(extra: Callable[[], dict[str, Any]] = dict) -> Callable[[], dict[str, Any]]:
    def inputs() -> dict[str, Any]:
        return {**extra(), "control_image": [uv.condition_image(1)], "control_mode": [0]}

    return inputs


def _sdxl() -> dict[str, Callable[[], Any]]:
    return uv.sdxl_pool()


def _sdxl_union() -> dict[str, Callable[[], Any]]:
    return uv.sdxl_pool(controlnet=lambda: uv.sdxl_controlnet(union=True))


def _pix2pix(pool: Callable[[], dict]) -> Callable[[], dict]:
    unet = uv.sdxl_unet if pool is _sdxl else uv.sd_unet
    return lambda: pool() | {"unet": lambda: unet(in_channels=8)}


def _sd() -> dict[str, Callable[[], Any]]:
    return uv.sd_pool()


_PIX2PIX_INPUTS = dict(image_guidance_scale=1.5)

VARIANTS: list[Variant] = [
    # ControlNet / T2I-Adapter: the denoiser is guided, the ControlNet runs stock (see README)
    Variant("StableDiffusionControlNetPipeline", _sd, _control),
    Variant("StableDiffusionControlNetImg2ImgPipeline", _sd, _init_control),
    Variant("StableDiffusionControlNetInpaintPipeline", _sd, _inpaint_control),
    Variant("StableDiffusionAdapterPipeline", _sd, _control),
    Variant("StableDiffusionXLControlNetPipeline", _sdxl, _control, family="sdxl"),
    Variant("StableDiffusionXLControlNetImg2ImgPipeline", _sdxl, _init_control, family="sdxl"),
    Variant("StableDiffusionXLControlNetInpaintPipeline", _sdxl, _inpaint_control, family="sdxl"),
    Variant("StableDiffusionXLControlNetUnionPipeline", _sdxl_union, _union(), family="sdxl"),
    Variant("StableDiffusionXLControlNetUnionImg2ImgPipeline", _sdxl_union, _union(_init), family="sdxl"),
    Variant("StableDiffusionXLControlNetUnionInpaintPipeline", _sdxl_union, _union(_inpaint), family="sdxl"),
    Variant("StableDiffusionXLAdapterPipeline", _sdxl, _control, family="sdxl"),
    # PAG: [uncond, cond, perturbed]
    Variant("StableDiffusionPAGPipeline", _sd, cond=_pag_cond),
    Variant("StableDiffusionPAGImg2ImgPipeline", _sd, _init, cond=_pag_cond),
    Variant("StableDiffusionPAGInpaintPipeline", _sd, _inpaint, cond=_pag_cond),
    Variant("StableDiffusionControlNetPAGPipeline", _sd, _control, cond=_pag_cond),
    Variant("StableDiffusionXLPAGPipeline", _sdxl, family="sdxl", cond=_pag_cond),
    Variant("StableDiffusionXLPAGImg2ImgPipeline", _sdxl, _init, family="sdxl", cond=_pag_cond),
    Variant("StableDiffusionXLPAGInpaintPipeline", _sdxl, _inpaint, family="sdxl", cond=_pag_cond),
    Variant("StableDiffusionXLControlNetPAGPipeline", _sdxl, _control, family="sdxl", cond=_pag_cond),
    Variant("StableDiffusionXLControlNetPAGImg2ImgPipeline", _sdxl, _init_control, family="sdxl", cond=_pag_cond),
    # InstructPix2Pix: [text + image, image only, uncond]
    Variant(
        "StableDiffusionInstructPix2PixPipeline",
        _pix2pix(_sd),
        lambda: {"image": uv.condition_image(2), **_PIX2PIX_INPUTS},
        cond=_first,
    ),
    Variant(
        "StableDiffusionXLInstructPix2PixPipeline",
        _pix2pix(_sdxl),
        lambda: {"image": uv.condition_image(2), **_PIX2PIX_INPUTS},
        family="sdxl",
        cond=_first,
    ),
]


def _scheduled(pool: Callable[[], dict], name: str) -> Callable[[], dict]:
    return lambda: pool() | {"scheduler": uv.scheduler(name)}


def _gated(pool: Callable[[], dict]) -> Callable[[], dict]:
    return lambda: pool() | {"unet": lambda: uv.sd_unet(attention_type="gated")}


def _lcm() -> dict[str, Callable[[], Any]]:
    return uv.sd_pool(scheduler=uv.scheduler("LCMScheduler"), unet=lambda: uv.sd_unet(time_cond_proj_dim=8))


def _frames(count: int = 2) -> list[Any]:
    from PIL import Image

    return [Image.new("RGB", (16, 16), (40 * i, 90, 160)) for i in range(count)]


_NP = {"guidance_scale": 5.0, "output_type": "np"}


def _video(frames: int = 2) -> Callable[[], dict[str, Any]]:
    return lambda: {"num_frames": frames}


VARIANTS += [
    # the same UNet, fed as SD's pipelines feed it
    Variant("AltDiffusionPipeline", _sd),
    Variant("AltDiffusionImg2ImgPipeline", _sd, _init),
    Variant("StableDiffusionPanoramaPipeline", _sd, lambda: {"view_batch_size": 1}, cfg={"guidance_scale": 5.0}),
    Variant("StableDiffusionSAGPipeline", _scheduled(_sd, "DDIMScheduler")),
    Variant("StableDiffusionModelEditingPipeline", _sd),
    Variant("StableDiffusionLDM3DPipeline", lambda: _sd() | {"vae": lambda: uv.sd_vae(channels=4)}, cfg=_NP),
    Variant(
        "StableDiffusionGLIGENPipeline",
        _gated(_sd),
        lambda: {"gligen_phrases": ["a car"], "gligen_boxes": [[0, 0, 0.5, 0.5]]},
    ),
    Variant("CycleDiffusionPipeline", _scheduled(_sd, "DDIMScheduler"), lambda: {**_init(), "source_prompt": "a car"}),
    Variant("StableDiffusionControlNetPAGInpaintPipeline", _sd, _inpaint_control, cond=_pag_cond),
    Variant("LatentConsistencyModelPipeline", _lcm),
    Variant("LatentConsistencyModelImg2ImgPipeline", _lcm, _init),
    Variant(
        "StableDiffusionUpscalePipeline",
        lambda: (
            _sd()
            | {
                "unet": lambda: uv.sd_unet(in_channels=7, out_channels=4),
                "low_res_scheduler": uv.scheduler("DDPMScheduler"),
            }
        ),
        lambda: {"image": uv.condition_image(2, 8)},
    ),
    Variant(
        "StableDiffusionDepth2ImgPipeline",
        lambda: _sd() | {"unet": lambda: uv.sd_unet(in_channels=5)},
        lambda: {"image": uv.condition_image(2), "depth_map": torch.rand(1, 16, 16), "strength": 0.99},
        given=lambda: {"depth_estimator": None},  # the depth map is given
    ),
    # AnimateDiff / PIA: UNetMotionModel, its motion modules stay stock
    Variant("AnimateDiffPipeline", _sd, _video(), rows_per_prompt=2),
    Variant("AnimateDiffPAGPipeline", _sd, _video(), cond=_pag_cond),
    Variant(
        "AnimateDiffControlNetPipeline",
        _sd,
        lambda: {"num_frames": 2, "conditioning_frames": [uv.condition_image(1)] * 2},
    ),
    Variant("AnimateDiffVideoToVideoPipeline", _sd, lambda: {"video": _frames(), "strength": 0.99}),
    Variant(
        "AnimateDiffVideoToVideoControlNetPipeline",
        _sd,
        lambda: {"video": _frames(), "conditioning_frames": _frames(), "strength": 0.99},
    ),
    Variant("AnimateDiffSDXLPipeline", _sdxl, _video(), family="sdxl"),
    Variant(
        "PIAPipeline",
        lambda: _sd() | {"unet": lambda: uv.sd_unet(in_channels=9)},
        lambda: {"image": uv.condition_image(2), "num_frames": 2},
    ),
]

CONTRACT = [
    v
    for v in VARIANTS
    if v.pipeline
    in {
        "StableDiffusionControlNetPipeline",
        "StableDiffusionXLControlNetUnionPipeline",
        "StableDiffusionXLPAGPipeline",
        "StableDiffusionInstructPix2PixPipeline",
        "AnimateDiffPipeline",
    }
]
# PAG without CFG batches [cond, perturbed]: CFG's [uncond, cond] rule would guide the perturbed rows
CONTRACT.append(
    Variant(
        "StableDiffusionXLPAGPipeline", _sdxl, family="sdxl", cond=_first, cfg={"guidance_scale": 1.0}, label="no-cfg"
    )
)


def tensor_of(output: Any) -> torch.Tensor:
    """The first output tensor of a pipeline call (images, frames or latents)."""
    first = output[0]
    return first if isinstance(first, torch.Tensor) else torch.as_tensor(first)


def _joint(make: str, **factories: Callable[[dict], Any]) -> Callable[[], dict[str, Callable[[], Any]]]:
    from nag_guidance.testing import joint, transformer_variants

    return lambda: transformer_variants.pool_of(getattr(joint, make), **factories)


def _image(make: str, **factories: Callable[[dict], Any]) -> Callable[[], dict[str, Callable[[], Any]]]:
    from nag_guidance.testing import image, transformer_variants

    return lambda: transformer_variants.pool_of(getattr(image, make), **factories)


def _call(module: str, name: str) -> Callable[[], dict[str, Any]]:
    def base() -> dict[str, Any]:
        import importlib

        return getattr(importlib.import_module(f"nag_guidance.testing.{module}"), name)()

    return base


def _tv():
    from nag_guidance.testing import transformer_variants

    return transformer_variants


_FLUX = dict(family="flux", denoiser="transformer", base=_call("joint", "flux_call_kwargs"), cfg={})
_SD3 = dict(family="sd3", denoiser="transformer", base=_call("joint", "sd3_call_kwargs"), cfg={})
_SANA = dict(family="sana", denoiser="transformer", base=_call("image", "sana_call_kwargs"), cfg={})
_PIXART = dict(family="pixart", denoiser="transformer", base=_call("image", "pixart_call_kwargs"), cfg={})


def _control32() -> dict[str, Any]:
    return {"control_image": uv.condition_image(1, 16)}


JOINT_VARIANTS: list[Variant] = [
    Variant(
        "FluxControlNetPipeline",
        _joint("make_flux", controlnet=lambda c: _tv().flux_controlnet(c)),
        _control32,
        **_FLUX,
    ),
    Variant(
        "FluxControlPipeline",
        _joint("make_flux", transformer=lambda c: _tv().flux_transformer(32)(c)),
        _control32,
        **_FLUX,
    ),
    Variant(
        "FluxFillPipeline",
        _joint("make_flux", transformer=lambda c: _tv().flux_transformer(36)(c)),
        lambda: {"image": uv.condition_image(2), "mask_image": uv.mask_image()},
        **_FLUX,
    ),
    Variant(
        "FluxControlImg2ImgPipeline",
        _joint("make_flux", transformer=lambda c: _tv().flux_transformer(32)(c)),
        lambda: {**_init(), **_control32()},
        **_FLUX,
    ),
    Variant(
        "FluxControlInpaintPipeline",
        _joint("make_flux", transformer=lambda c: _tv().flux_transformer(32)(c)),
        lambda: {**_inpaint(), **_control32()},
        **_FLUX,
    ),
    Variant(
        "FluxControlNetImg2ImgPipeline",
        _joint("make_flux", controlnet=lambda c: _tv().flux_controlnet(c)),
        lambda: {**_init(), **_control32()},
        **_FLUX,
    ),
    Variant(
        "FluxControlNetInpaintPipeline",
        _joint("make_flux", controlnet=lambda c: _tv().flux_controlnet(c)),
        lambda: {**_inpaint(), **_control32()},
        **_FLUX,
    ),
    Variant(
        "StableDiffusion3ControlNetPipeline",
        _joint("make_sd3", controlnet=lambda c: _tv().sd3_controlnet(c)),
        _control32,
        **_SD3,
    ),
    Variant(
        "StableDiffusion3PAGPipeline", _joint("make_sd3"), cond=_pag_cond, **{**_SD3, "cfg": {"guidance_scale": 5.0}}
    ),
    Variant(
        "StableDiffusion3PAGImg2ImgPipeline",
        _joint("make_sd3"),
        _init,
        cond=_pag_cond,
        **{**_SD3, "cfg": {"guidance_scale": 5.0}},
    ),
    Variant("SanaPAGPipeline", _image("make_sana"), cond=_pag_cond, **{**_SANA, "cfg": {"guidance_scale": 5.0}}),
    Variant(
        "PixArtSigmaPAGPipeline", _image("make_pixart"), cond=_pag_cond, **{**_PIXART, "cfg": {"guidance_scale": 5.0}}
    ),
]
VARIANTS += JOINT_VARIANTS
