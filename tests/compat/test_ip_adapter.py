"""IP-Adapters loaded with diffusers' own ``load_ip_adapter`` (tiny adapters built here in diffusers' state-dict
layout, image prompts given as ``ip_adapter_image_embeds`` so no image encoder is needed) on SD 1.5, SDXL and
Flux, before or after ``nag.apply``.

There is no independent reference of NAG with an image prompt, so a non-zero IP-Adapter scale is "kept": NAG
guides every layer it guides without the adapter, its output differs from NAG without the adapter (the image
prompt acted) and from the stock pipeline with the adapter (NAG acted), and it does not depend on whether the
adapter was loaded before or after ``nag.apply``. With ``set_ip_adapter_scale(0.0)`` the processors skip the
image-prompt attention, so NAG with the adapter must equal NAG without it (within 1e-6 relative), and so must
NAG after ``unload_ip_adapter``.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

import nag_guidance as nag
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate, relative_diff
from tests.integration.joint_cases import BY_ID as JOINT
from tests.integration.test_cross_attention import NAG, NEGATIVE

COMPAT_NOTE = (
    "What NAG does with the image prompt: NAG's negative replaces the text only, so both branches see the same "
    "image prompt. On SD/SDXL the IP-Adapter processor adds its image-prompt attention to the text attention "
    "before the output projection, so Z+ and Z- carry the same image-prompt term: NAG extrapolates away from the "
    "negative text, and the image-prompt term counts in the norm ratio as part of Z+. On Flux the IP-Adapter "
    "processor returns its image-prompt attention separately and the block adds it after the attention output: "
    "NAG guides the joint attention, the image-prompt term is added unguided."
)

NAG_CALL = {"nag_negative_prompt": NEGATIVE, **NAG}
FAMILIES = [CROSS["sd15"], CROSS["sdxl"], JOINT["flux"]]
families = pytest.mark.parametrize("case", FAMILIES, ids=[c.id for c in FAMILIES])
IMAGE_EMBED_DIM = 8  # the (absent) image encoder's embedding width
CROSS_CFG = 3.0  # SD/SDXL run with CFG, so the image prompt's batch is cut to the guided rows too


def _random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * 0.3


def ip_adapter_state_dict(pipe: Any, case: Any) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter ("proj" image projection, 4 image tokens) for the pipeline's denoiser, in the layout
    diffusers' ``_load_ip_adapter_weights`` reads: per adapted attention layer, numbered as diffusers numbers
    them, the image-prompt key and value projections."""
    generator = torch.Generator().manual_seed(3)
    if case.id in JOINT:
        model, layers = pipe.transformer, [b.attn for b in pipe.transformer.transformer_blocks]
        width, bias = model.config.joint_attention_dim, True
        numbers = range(len(layers))  # one per dual-stream block
    else:
        model = pipe.unet
        width, bias = model.config.cross_attention_dim, False
        names = [name for name in model.attn_processors if not name.endswith("attn1.processor")]
        layers = [model.get_submodule(name.removesuffix(".processor")) for name in names]
        numbers = range(1, 2 * len(names), 2)  # diffusers numbers the cross-attention layers 1, 3, 5...
    adapter = {}
    for number, layer in zip(numbers, layers, strict=True):
        for kind in ("k", "v"):
            shape = (layer.to_k.weight.shape[0], width)
            adapter[f"{number}.to_{kind}_ip.weight"] = _random(generator, *shape)
            if bias:
                adapter[f"{number}.to_{kind}_ip.bias"] = _random(generator, shape[0])
    image_proj = {
        "proj.weight": _random(generator, 4 * width, IMAGE_EMBED_DIM),
        "proj.bias": _random(generator, 4 * width),
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
    }
    return {"image_proj": image_proj, "ip_adapter": adapter}


def load_ip_adapter(pipe: Any, case: Any) -> None:
    state_dict = ip_adapter_state_dict(pipe, case)
    if case.id in JOINT:
        pipe.load_ip_adapter(state_dict, weight_name="", image_encoder_pretrained_model_name_or_path=None)
    else:
        pipe.load_ip_adapter(state_dict, subfolder="", weight_name="", image_encoder_folder=None)


def plain_call(case: Any) -> dict:
    return {} if case.id in JOINT else {"guidance_scale": CROSS_CFG}


def image_prompt_call(case: Any) -> dict:
    """The call arguments with an image prompt (and, for CFG / Flux, the zero negative image prompt)."""
    image = torch.randn(1, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(5))
    if case.id in JOINT:  # Flux encodes a black negative image unless given negative embeds
        return {"ip_adapter_image_embeds": [image], "negative_ip_adapter_image_embeds": [torch.zeros_like(image)]}
    return {"ip_adapter_image_embeds": [torch.cat([torch.zeros_like(image), image])], **plain_call(case)}


@functools.cache
def _nag_alone(case_id: str) -> tuple[torch.Tensor, int]:
    """(NAG output, layers guided) without an IP-Adapter."""
    case = CROSS.get(case_id) or JOINT[case_id]
    pipe = nag.apply(case.make())
    return generate(pipe, case, nag=NAG_CALL, **plain_call(case)), pipe.nag_report.layers_guided


@functools.cache
def _stock_with_adapter(case_id: str) -> torch.Tensor:
    case = CROSS.get(case_id) or JOINT[case_id]
    pipe = case.make()
    load_ip_adapter(pipe, case)
    return generate(pipe, case, **image_prompt_call(case))


def guided(pipe: Any, case: Any, **call: Any) -> torch.Tensor:
    """NAG's output; asserts NAG guided every step and every layer it guides without an IP-Adapter."""
    output = generate(pipe, case, nag=NAG_CALL, **call)
    report = pipe.nag_report
    assert report.active and not report.warnings, report.warnings
    assert report.layers_guided == _nag_alone(case.id)[1]
    assert report.steps_guided == report.steps_total
    return output


def assert_image_prompt_kept(pipe: Any, case: Any) -> torch.Tensor:
    output = guided(pipe, case, **image_prompt_call(case))
    assert relative_diff(output, _nag_alone(case.id)[0]) > 1e-3  # the image prompt acted
    assert relative_diff(output, _stock_with_adapter(case.id)) > 1e-3  # NAG acted
    nag.remove(pipe)
    stock = generate(pipe, case, **image_prompt_call(case))
    assert relative_diff(stock, _stock_with_adapter(case.id)) <= 1e-6
    return output


@functools.cache
def _loaded_before_apply(case_id: str) -> torch.Tensor:
    case = CROSS.get(case_id) or JOINT[case_id]
    pipe = case.make()
    load_ip_adapter(pipe, case)
    return assert_image_prompt_kept(nag.apply(pipe), case)


@pytest.mark.compat("IP-Adapter", "load_ip_adapter before nag.apply", "kept")
@families
def test_load_ip_adapter_before_apply(case):
    """NAG guides every text-attention layer with an image prompt, which changes the output; remove gives stock."""
    _loaded_before_apply(case.id)


@pytest.mark.compat("IP-Adapter", "load_ip_adapter after nag.apply", "kept")
@families
def test_load_ip_adapter_after_apply(case):
    """NAG follows an adapter loaded after apply: as when loaded before, and the same output (within 1e-6)."""
    pipe = nag.apply(case.make())
    guided(pipe, case, **plain_call(case))
    load_ip_adapter(pipe, case)
    output = assert_image_prompt_kept(pipe, case)
    assert relative_diff(output, _loaded_before_apply(case.id)) <= 1e-6


@pytest.mark.compat("IP-Adapter", "set_ip_adapter_scale(0.0) after nag.apply", "equal")
@families
def test_ip_adapter_scale_zero_equals_nag_alone(case):
    """At IP-Adapter scale 0 NAG equals NAG without the adapter; back at scale 1 the image prompt acts again."""
    pipe = nag.apply(case.make())
    load_ip_adapter(pipe, case)
    with_image = guided(pipe, case, **image_prompt_call(case))
    pipe.set_ip_adapter_scale(0.0)
    assert relative_diff(guided(pipe, case, **image_prompt_call(case)), _nag_alone(case.id)[0]) <= 1e-6
    pipe.set_ip_adapter_scale(1.0)
    assert relative_diff(guided(pipe, case, **image_prompt_call(case)), with_image) <= 1e-6


@pytest.mark.compat("IP-Adapter", "unload_ip_adapter after nag.apply", "equal")
@families
def test_unload_ip_adapter_equals_nag_alone(case):
    """After unload_ip_adapter on an applied pipeline (used with an image prompt) NAG equals NAG without one."""
    pipe = nag.apply(case.make())
    load_ip_adapter(pipe, case)
    guided(pipe, case, **image_prompt_call(case))
    pipe.unload_ip_adapter()
    assert relative_diff(guided(pipe, case, **plain_call(case)), _nag_alone(case.id)[0]) <= 1e-6
