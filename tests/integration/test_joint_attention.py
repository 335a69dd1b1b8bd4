"""The integration checks of every joint-attention family, on tiny random pipelines (offline), plus the
text-length, true-CFG and pooled-vector checks specific to joint attention."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

import nag_guidance as nag
from tests.integration.helpers import ForwardRecorder, flops_per_forward, generate, hook_snapshot, relative_diff
from tests.integration.joint_cases import JOINT_CASES
from tests.integration.joint_reference import JointReference, layer_names

NAG = dict(nag_scale=5.0, nag_tau=2.5, nag_alpha=0.5, nag_start=0.0, nag_end=1.0)
NEGATIVE = "blurry dog"
PROMPT = "a red car"


@pytest.fixture(params=JOINT_CASES, ids=[c.id for c in JOINT_CASES])
def case(request):
    return request.param


def reference(case, negative, prompts=PROMPT, per_prompt=1, negative_pooled=False, pipe=None, **call):
    """Output of the independent slow reference; ``negative`` is text or (embeds, mask), or with
    ``negative_pooled`` (embeds, mask, pooled): then the halves get their own pooled vectors, with the image
    stream of dual-stream blocks modulated by the prompt half (the NAG authors' Flux method)."""
    pipe = pipe or case.make()
    copy = lambda text: list(text) if isinstance(text, list) else text  # noqa: E731 (Z-Image rewrites lists)
    prompt_text = case.encode(pipe, copy(prompts))
    negative_text = case.encode(pipe, copy(negative)) if isinstance(negative, (str, list)) else negative[:2]

    def per_row(t, dim=0):
        if t is None:
            return None
        if isinstance(t, list):  # Z-Image: one tensor per prompt
            return [row for row in t for _ in range(per_prompt)] if len(t) > 1 else t
        return t.repeat_interleave(per_prompt, dim) if t.shape[dim] > 1 else t

    extra, dims = {}, {}
    if negative_pooled:
        name, encode = case.pooled
        pooled = encode(pipe, copy(negative)) if isinstance(negative, (str, list)) else negative[2]
        extra = {name: (per_row(encode(pipe, copy(prompts))), per_row(pooled))}
    if case.extra_text:  # another per-branch text input (HiDream's Llama states)
        name, encode, dim = case.extra_text
        extra[name] = (per_row(encode(pipe, copy(prompts)), dim), per_row(encode(pipe, copy(negative)), dim))
        dims[name] = dim
    ref = JointReference(
        case.owner,
        case.attention_name,
        case.bshd,
        case.text_first,
        case.text_arg,
        case.mask_arg,
        case.ids_arg,
        tuple(per_row(t) for t in prompt_text),
        tuple(per_row(t) for t in negative_text),
        NAG["nag_scale"],
        NAG["nag_tau"],
        NAG["nag_alpha"],
        extra_text=extra or None,
        mask_spans_image=case.mask_spans_image,
        ids_kind=case.ids_kind,
        attention_modules=case.attention_modules,
        trimmed_caption=case.trimmed_caption,
        extra_text_dims=dims,
        image_tokens_of=case.image_tokens_of,
        prompt_image_modulation=("transformer_blocks.*.norm1",) if negative_pooled else (),
    )
    ref.install(getattr(pipe, case.denoisers[0]))
    try:
        return generate(pipe, case, prompts, **call), ref
    finally:
        ref.uninstall()


def test_1_scale_one_or_no_negative_is_stock(case):
    pipe = case.make()
    stock = generate(pipe, case)
    nag.apply(pipe)
    assert (generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, "nag_scale": 1.0}) - stock).abs().max() <= 1e-6
    assert (generate(pipe, case, nag={"nag_scale": 5.0}) - stock).abs().max() <= 1e-6
    assert not pipe.nag_report.active


def test_2_equals_slow_reference_in_every_block(case):
    pipe = case.make()
    stock = generate(pipe, case)
    nag.apply(pipe)
    guided = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    report = pipe.nag_report
    expected, ref = reference(case, NEGATIVE)
    assert relative_diff(guided, expected) <= 1e-5
    assert relative_diff(guided, stock) > 1e-3
    modules = layer_names(getattr(pipe, case.denoisers[0]), case.attention_modules)
    assert report.layers_guided == len(modules)  # single-stream blocks included
    assert ref.guided_calls == len(modules) * report.steps_total


@pytest.mark.parametrize("which", ["shorter", "longer"])
def test_negative_shorter_or_longer_than_the_prompt(case, which):
    short, long = case.negative_lengths(case.make())
    embeds = short if which == "shorter" else long
    pipe = nag.apply(case.make())
    if which in case.refused_negative_lengths:  # the family documents why it cannot take such a negative
        with pytest.raises(ValueError, match="NAG negative"):
            generate(pipe, case, nag={"nag_negative_prompt_embeds": embeds, **NAG})
        return
    guided = generate(pipe, case, nag={"nag_negative_prompt_embeds": embeds, **NAG})
    assert pipe.nag_report.active
    expected, _ = reference(case, (embeds, None))
    assert relative_diff(guided, expected) <= 1e-5


@pytest.mark.parametrize("case", [c for c in JOINT_CASES if c.batch_test], ids=lambda c: c.id)
def test_4_batch_two_by_two(case):
    prompts, negatives = ["a red car", "a blue cat"], ["dog", "dark blurry glasses"]
    pipe = nag.apply(case.make())
    call = {case.per_prompt: 2}
    per_prompt = 2 if case.honours_per_prompt else 1  # CogVideoX's pipelines always make one video per prompt
    guided = generate(pipe, case, prompts, nag={"nag_negative_prompt": negatives, **NAG}, **call)
    assert guided.shape[0] == 2 * per_prompt and pipe.nag_report.active
    expected, _ = reference(case, negatives, prompts, per_prompt=per_prompt, **call)
    assert relative_diff(guided, expected) <= 1e-5


@pytest.mark.parametrize("case", [c for c in JOINT_CASES if c.cfg_kwargs], ids=lambda c: c.id)
def test_3_cfg_and_true_cfg_passes_are_unguided(case):
    def first_step_outputs(pipe, **nag_args):
        recorder = ForwardRecorder([getattr(pipe, case.denoisers[0])])
        generate(pipe, case, nag=nag_args, **case.cfg_kwargs)
        recorder.close()
        return recorder.outputs

    pipe = case.make()
    stock = first_step_outputs(pipe)
    nag.apply(pipe)
    guided = first_step_outputs(pipe, nag_negative_prompt=NEGATIVE, **NAG)
    assert pipe.nag_report.active
    if case.cfg == "separate":  # the pipeline calls the denoiser for the prompt, then for its own negative
        cond_stock, uncond_stock, cond_nag, uncond_nag = stock[0], stock[1], guided[0], guided[1]
    else:
        half = stock[0].shape[0] // 2
        first, second = (slice(0, half), slice(half, None))
        cond, uncond = (first, second) if case.cfg == "batched-cond-first" else (second, first)
        cond_stock, cond_nag = stock[0][cond], guided[0][cond]
        uncond_stock, uncond_nag = stock[0][uncond], guided[0][uncond]
    assert (uncond_nag - uncond_stock).abs().max().item() <= 1e-6
    assert relative_diff(cond_nag, cond_stock) > 1e-3


def test_5_steps_after_the_window_cost_what_stock_costs(case):
    call = {"num_inference_steps": 4}
    pipe = case.make()
    stock = flops_per_forward(pipe, case, **call)
    nag.apply(pipe)
    guided = {"nag_negative_prompt": NEGATIVE, **NAG, "nag_end": 0.5, "nag_window": "steps"}
    window = flops_per_forward(pipe, case, nag=guided, **call)
    total = pipe.nag_report.steps_total
    in_window = sum(1 for i in range(total) if i / total < 0.5)
    assert pipe.nag_report.steps_guided == in_window < total
    per_step = len(stock) // total
    assert len(window) == len(stock)
    assert all(w > s for w, s in zip(window[: in_window * per_step], stock, strict=False))
    assert window[in_window * per_step :] == stock[in_window * per_step :]


def test_6_remove_restores_objects_and_stock_output(case):
    pipe = case.make()
    stock = generate(pipe, case)
    cls = type(pipe)
    denoiser = getattr(pipe, case.denoisers[0])
    before = hook_snapshot(denoiser)
    nag.apply(pipe)
    generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    nag.remove(pipe)
    assert type(pipe) is cls and hook_snapshot(denoiser) == before
    assert (generate(pipe, case) - stock).abs().max().item() <= 1e-6


def test_7_model_cpu_offload_and_lora(case):
    pipe = nag.apply(case.make())
    plain = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    pipe.enable_model_cpu_offload(device="cpu")
    assert (generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG}) - plain).abs().max() <= 1e-6
    torch.manual_seed(7)
    lora = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    inject_adapter_in_model(lora, getattr(pipe, case.denoisers[0]))
    with_lora = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    assert pipe.nag_report.active and relative_diff(with_lora, plain) > 1e-4
    nag.remove(pipe)
    expected, _ = reference(case, NEGATIVE, pipe=pipe)
    assert relative_diff(with_lora, expected) <= 1e-5
