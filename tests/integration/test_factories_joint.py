"""The joint-attention factories build stock pipelines that run offline: 2 steps, batch 1 and (with their CFG path on)
2 prompts × 2 samples each, finite latents, and the prompt changes the result. No NAG here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from nag_guidance.testing import joint as fj


@dataclass(frozen=True)
class Factory:
    id: str
    make: Any
    call_kwargs: Any
    cfg: dict  # turns the pipeline's classifier-free guidance on (a negative prompt where the pipeline takes one)
    per_prompt: str | None = "num_images_per_prompt"  # None: the pipeline has none that works
    per_prompt_image: bool = False  # the image input must be a list with one image per prompt


NEG = "blurry"
FACTORIES = [
    Factory("sd3", fj.make_sd3, fj.sd3_call_kwargs, {"guidance_scale": 5.0, "negative_prompt": NEG}),
    Factory("sd35", fj.make_sd35, fj.sd3_call_kwargs, {"guidance_scale": 5.0, "negative_prompt": NEG}),
    Factory("flux", fj.make_flux, fj.flux_call_kwargs, {"true_cfg_scale": 4.0, "negative_prompt": NEG}),
    Factory(
        "flux-kontext",
        fj.make_flux_kontext,
        fj.flux_kontext_call_kwargs,
        {"true_cfg_scale": 4.0, "negative_prompt": NEG},
    ),
    Factory("chroma", fj.make_chroma, fj.chroma_call_kwargs, {"guidance_scale": 4.0, "negative_prompt": NEG}),
    Factory("qwen-image", fj.make_qwenimage, fj.qwenimage_call_kwargs, {"true_cfg_scale": 4.0, "negative_prompt": NEG}),
    Factory(
        "qwen-image-edit",
        fj.make_qwenimage_edit,
        fj.qwenimage_edit_call_kwargs,
        {"true_cfg_scale": 4.0, "negative_prompt": NEG},
        per_prompt_image=True,
    ),
    Factory(
        "hunyuan-video",
        fj.make_hunyuan_video,
        fj.hunyuan_video_call_kwargs,
        {"true_cfg_scale": 4.0, "negative_prompt": NEG},
        per_prompt="num_videos_per_prompt",
    ),
    # FLUX.2-dev's pipeline has no CFG at all (guidance-distilled); its "cfg" is the embedded guidance scale.
    Factory("flux2", fj.make_flux2, fj.flux2_call_kwargs, {"guidance_scale": 2.0}),
    # FLUX.2 Klein (base) has no negative_prompt: CFG runs against the empty prompt.
    Factory("flux2-klein", fj.make_flux2_klein, fj.flux2_klein_call_kwargs, {"guidance_scale": 4.0}),
    Factory("z-image", fj.make_zimage, fj.zimage_call_kwargs, {"guidance_scale": 4.0, "negative_prompt": NEG}),
    # The stock CogVideoX pipeline resets num_videos_per_prompt to 1.
    Factory(
        "cogvideox", fj.make_cogvideox, fj.cogvideox_call_kwargs, {"guidance_scale": 6.0, "negative_prompt": NEG}, None
    ),
    Factory("lumina2", fj.make_lumina2, fj.lumina2_call_kwargs, {"guidance_scale": 4.0, "negative_prompt": NEG}),
    Factory("hidream", fj.make_hidream, fj.hidream_call_kwargs, {"guidance_scale": 5.0, "negative_prompt": NEG}),
]


def _latents(pipe, factory: Factory, prompt, **call) -> torch.Tensor:
    kwargs = factory.call_kwargs(**call)
    return pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **kwargs)[0]


@pytest.fixture(params=FACTORIES, ids=[f.id for f in FACTORIES], scope="module")
def built(request):
    factory = request.param
    return factory, factory.make()


def test_runs_and_prompt_matters(built):
    factory, pipe = built
    red = _latents(pipe, factory, "a red car")
    blue = _latents(pipe, factory, "a blue dog")
    assert torch.isfinite(red).all()
    assert red.shape[0] == 1
    assert not torch.allclose(red, blue, rtol=0, atol=1e-7)


def test_batch_with_cfg(built):
    factory, pipe = built
    prompts = ["a red car", "a blue dog"]
    call = dict(factory.cfg)
    if "negative_prompt" in call:
        call["negative_prompt"] = [call["negative_prompt"]] * len(prompts)
    if factory.per_prompt_image:
        call["image"] = [factory.call_kwargs()["image"]] * len(prompts)
    per_prompt = 2 if factory.per_prompt else 1
    if factory.per_prompt:
        call[factory.per_prompt] = per_prompt
    out = _latents(pipe, factory, prompts, **call)
    assert out.shape[0] == len(prompts) * per_prompt
    assert torch.isfinite(out).all()
    single = _latents(pipe, factory, "a red car")
    assert out.shape[1:] == single.shape[1:]


def test_factory_is_deterministic():
    factory = FACTORIES[2]  # flux: one factory suffices to check the seeding pattern
    first = _latents(factory.make(), factory, "a red car")
    second = _latents(factory.make(), factory, "a red car")
    assert torch.equal(first, second)
