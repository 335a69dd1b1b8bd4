"""diffusers' pipeline contract on NAG-applied pipelines: component-subset pipelines, stock signatures, and the
operations that replace processors or denoisers (set_default_attn_processor, set_attn_processor, rebuilding
processors without arguments as load_ip_adapter does, fuse_qkv_projections, assigning a new denoiser). Each either
keeps NAG working and equal to NAG on an untouched pipeline, or refuses clearly."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import nag_guidance as nag
from nag_guidance.integration.processors import ProcessorWrapper
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate, hook_snapshot, relative_diff
from tests.integration.joint_cases import BY_ID as JOINT

NAG = {"nag_negative_prompt": "blue", "nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}


def _reference(case, prepare=lambda pipe: None) -> torch.Tensor:
    """NAG on a fresh pipeline that had ``prepare`` done to it before ``apply``."""
    pipe = case.make()
    prepare(pipe)
    return generate(nag.apply(pipe), case, nag=NAG)


ENCODE = {
    "sd15": lambda pipe: pipe.encode_prompt("a red car", torch.device("cpu"), 1, False),
    "sdxl": lambda pipe: pipe.encode_prompt("a red car", device=torch.device("cpu"), do_classifier_free_guidance=False),
    "flux": lambda pipe: pipe.encode_prompt("a red car", prompt_2=None, max_sequence_length=16),
}
CASES = {"sd15": (CROSS["sd15"], "unet"), "sdxl": (CROSS["sdxl"], "unet"), "flux": (JOINT["flux"], "transformer")}


@pytest.mark.parametrize("case_id", CASES)
def test_encode_only_pipeline_can_be_applied(case_id):
    case, denoiser = CASES[case_id]
    full = case.make()
    encoder = type(full)(**{**full.components, denoiser: None, "vae": None})
    nag.apply(encoder)  # no denoiser: nothing to hook, and no error
    stock, encoded = ENCODE[case_id](full), ENCODE[case_id](encoder)
    assert all(torch.equal(a, b) for a, b in zip(stock, encoded, strict=True) if isinstance(a, torch.Tensor))
    nag.remove(encoder)


@pytest.mark.parametrize("case_id", CASES)
def test_a_denoiser_given_after_apply_gets_nag(case_id):
    case, denoiser = CASES[case_id]
    full = case.make()
    pipe = type(full)(**{**full.components, denoiser: None})
    nag.apply(pipe)
    setattr(pipe, denoiser, getattr(full, denoiser))
    out = generate(pipe, case, nag=NAG)
    assert pipe.nag_report.active
    assert relative_diff(out, _reference(case)) < 1e-6


def test_signatures_stay_the_stock_ones_plus_the_nag_keywords():
    pipe = CROSS["sdxl"].make()
    call, encode = inspect.signature(pipe.__call__), inspect.signature(pipe.encode_prompt)
    nag.apply(pipe)
    applied = inspect.signature(pipe.__call__).parameters
    named = [name for name, p in call.parameters.items() if p.kind is not p.VAR_KEYWORD]
    assert list(applied)[: len(named)] == named  # the stock ones first, in order
    assert list(applied)[-1] == "kwargs"  # and the stock **kwargs last
    assert [n for n in applied if n.startswith("nag_")] == list(nag.integration.NAG_CALL_ARGUMENTS)
    assert inspect.signature(pipe.encode_prompt) == encode
    assert pipe.__call__.__doc__ == type(pipe).__mro__[2].__call__.__doc__


@pytest.mark.parametrize(("case_id", "model"), [("sdxl", "unet"), ("pixart-sigma", "transformer")])
def test_set_default_attn_processor_keeps_nag(case_id, model):
    case = CROSS[case_id]
    pipe = nag.apply(case.make())
    getattr(pipe, model).set_default_attn_processor()  # diffusers' class check must not refuse NAG's wrappers
    out = generate(pipe, case, nag=NAG)
    assert pipe.nag_report.active
    assert relative_diff(out, _reference(case, lambda p: getattr(p, model).set_default_attn_processor())) < 1e-6


def test_processors_replaced_after_apply_are_followed_and_removed_exactly():
    case = CROSS["sd15"]
    pipe = case.make()
    before = hook_snapshot(pipe.unet)
    nag.apply(pipe)
    pipe.unet.set_attn_processor(AttnProcessor2_0())  # replaces NAG's wrappers everywhere
    out = generate(pipe, case, nag=NAG)
    assert pipe.nag_report.active and pipe.nag_report.layers_guided == 4
    assert relative_diff(out, _reference(case, lambda p: p.unet.set_attn_processor(AttnProcessor2_0()))) < 1e-6
    nag.remove(pipe)
    after = hook_snapshot(pipe.unet)
    assert all(not isinstance(entry[4], ProcessorWrapper) for entry in after.values())
    assert {k: v[:4] for k, v in after.items()} == {k: v[:4] for k, v in before.items()}


def test_a_wrapper_rebuilt_without_arguments_is_a_stock_processor():
    pipe = nag.apply(JOINT["flux"].make())
    wrapper = pipe.transformer.transformer_blocks[0].attn.processor
    assert isinstance(wrapper, ProcessorWrapper)
    rebuilt = type(wrapper)()  # what load_ip_adapter does to every processor
    assert type(rebuilt) is type(wrapper.processor)


def test_fused_projections_keep_nag():
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    unfused = generate(pipe, case, nag=NAG)
    pipe.fuse_qkv_projections()
    fused = generate(pipe, case, nag=NAG)
    assert pipe.nag_report.active and pipe.nag_report.layers_guided == 4
    assert relative_diff(fused, unfused) < 1e-5


def test_a_new_denoiser_assigned_after_apply_is_followed():
    case = CROSS["sd15"]
    pipe = case.make()
    old = pipe.unet
    new = copy.deepcopy(old)
    before = hook_snapshot(old)
    nag.apply(pipe)
    pipe.unet = new
    out = generate(pipe, case, nag=NAG)
    assert pipe.nag_report.active
    assert relative_diff(out, _reference(case)) < 1e-6  # same weights
    assert hook_snapshot(old) == before  # the replaced one was given back stock


def test_text_negative_without_a_tokenizer_is_a_clear_error():
    case = CROSS["sd15"]
    pipe = case.make()
    embeds = pipe.encode_prompt("a red car", torch.device("cpu"), 1, False)[0]
    pipe.tokenizer = None
    nag.apply(pipe)
    with pytest.raises(ValueError, match="no tokenizer.*nag_negative_prompt_embeds"):
        pipe(prompt_embeds=embeds, nag_negative_prompt="blue", **case.kwargs())
