"""The seven integration checks of every cross-attention family, on tiny random pipelines (offline)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

import nag_guidance as nag
from tests.integration.cases import CASES
from tests.integration.helpers import (
    CallCounter,
    ForwardRecorder,
    flops_per_forward,
    generate,
    hook_snapshot,
    query_projection_flops,
    relative_diff,
)
from tests.integration.reference import ReferenceNAG

NAG = dict(nag_scale=5.0, nag_tau=2.5, nag_alpha=0.5, nag_start=0.0, nag_end=1.0)
NEGATIVE = "blurry dog"


def reference(case, pipe, negatives: list[str], cond_rows: int, scale=5.0, tau=2.5, alpha=0.5, **call):
    """Output of the independent slow reference on ``pipe`` (which must not have NAG applied)."""
    ref = ReferenceNAG(
        case.denoisers,
        case.text_layers,
        case.text_arg,
        case.mask_arg,
        case.encode_negative(pipe, negatives),
        scale,
        tau,
        alpha,
        cond_rows,
    )
    ref.install(pipe)
    return generate(pipe, case, **call), ref


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request):
    return request.param


def test_1_scale_one_or_no_negative_is_stock(case):
    pipe = case.make()
    stock = generate(pipe, case)
    nag.apply(pipe)
    off = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, "nag_scale": 1.0})
    assert (off - stock).abs().max().item() <= 1e-6
    assert not pipe.nag_report.active and "scale is 1" in pipe.nag_report.warnings[0]
    without = generate(pipe, case, nag={"nag_scale": 5.0})
    assert (without - stock).abs().max().item() <= 1e-6
    assert "no NAG negative" in pipe.nag_report.warnings[0]


def test_2_equals_slow_reference_and_differs_from_stock(case):
    pipe = case.make()
    stock = generate(pipe, case)
    nag.apply(pipe)
    guided = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    report = pipe.nag_report
    expected, ref = reference(case, case.make(), [NEGATIVE], cond_rows=1)
    assert relative_diff(guided, expected) <= 1e-5
    assert relative_diff(guided, stock) > 1e-3
    assert report.layers_guided == len(ref.guided_layers) > 0
    assert report.steps_guided == report.steps_total


@pytest.mark.parametrize(
    "negatives",
    [["dog"], ["blurry low quality video of a dark dog with glasses"], ["dog", "dark blurry glasses"]],
    ids=["shorter", "longer", "per-prompt"],
)
@pytest.mark.parametrize("case", [c for c in CASES if c.batch_test], ids=lambda c: c.id)
def test_4_batch_two_by_two_and_negative_lengths(case, negatives):
    prompts = ["a red car", "a blue cat"]
    call = {case.per_prompt: case.images_per_prompt} if case.per_prompt else {}
    rows = 2 * case.images_per_prompt
    pipe = nag.apply(case.make())
    guided = generate(pipe, case, prompts, nag={"nag_negative_prompt": negatives, **NAG}, **call)
    assert pipe.nag_report.active
    expected, _ = reference(case, case.make(), negatives, cond_rows=rows, prompt=prompts, **call)
    assert guided.shape[0] == rows
    assert relative_diff(guided, expected) <= 1e-5


def test_3_cfg_guides_only_the_conditional_branch(case):
    def first_step_outputs(pipe, **nag_args):
        recorder = ForwardRecorder([getattr(pipe, case.denoisers[0])])
        generate(pipe, case, nag=nag_args, guidance_scale=3.0, num_inference_steps=2)
        recorder.close()
        return recorder.outputs

    pipe = case.make()
    stock = first_step_outputs(pipe)
    nag.apply(pipe)
    guided = first_step_outputs(pipe, nag_negative_prompt=NEGATIVE, **NAG)
    assert pipe.nag_report.active
    if case.cfg == "batched":
        half = stock[0].shape[0] // 2
        uncond_stock, uncond_nag = stock[0][:half], guided[0][:half]
        cond_stock, cond_nag = stock[0][half:], guided[0][half:]
    else:  # the pipeline calls the denoiser for the prompt, then for its own negative
        cond_stock, uncond_stock, cond_nag, uncond_nag = stock[0], stock[1], guided[0], guided[1]
    assert (uncond_nag - uncond_stock).abs().max().item() <= 1e-6
    assert relative_diff(cond_nag, cond_stock) > 1e-3


def test_5_steps_after_the_window_cost_what_stock_costs(case):
    call = {"num_inference_steps": 4}
    pipe = case.make()
    counter = CallCounter(pipe, case)
    stock = flops_per_forward(pipe, case, **call)
    stock_calls = counter.counts["to_k"]
    stock_query = query_projection_flops(pipe, case, **call)
    nag.apply(pipe)
    counter.counts["to_k"] = 0
    guided = {"nag_negative_prompt": NEGATIVE, **NAG, "nag_end": 0.5, "nag_window": "steps"}
    window = flops_per_forward(pipe, case, nag=guided, **call)
    report = pipe.nag_report
    total = report.steps_total
    in_window = sum(1 for i in range(total) if i / total < 0.5)
    assert report.steps_guided == in_window < total
    # attention calls: one extra (the negative's) per text-attention layer, in guided steps only
    assert counter.counts["to_k"] == stock_calls + stock_calls * in_window // total
    # compute: every forward after the window costs exactly what the stock one costs, those inside cost more
    per_step = len(stock) // total
    assert len(window) == len(stock)
    assert all(w > s for w, s in zip(window[: in_window * per_step], stock, strict=False))
    assert window[in_window * per_step :] == stock[in_window * per_step :]
    # the query projection is shared by both branches: no extra flops there, even inside the window
    assert query_projection_flops(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG}, **call) == stock_query


def test_6_remove_restores_objects_and_stock_output(case):
    pipe = case.make()
    stock = generate(pipe, case)
    cls = type(pipe)
    before = {attr: hook_snapshot(getattr(pipe, attr)) for attr in case.denoisers if getattr(pipe, attr, None)}
    nag.apply(pipe)
    assert type(pipe) is not cls and type(pipe).__name__ == cls.__name__ and isinstance(pipe, cls)
    generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    nag.remove(pipe)
    assert type(pipe) is cls
    after = {attr: hook_snapshot(getattr(pipe, attr)) for attr in before}
    assert after == before
    assert not hasattr(pipe, "nag_report")
    assert (generate(pipe, case) - stock).abs().max().item() <= 1e-6


def test_7_model_cpu_offload(case):
    pipe = nag.apply(case.make())
    plain = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    pipe.enable_model_cpu_offload(device="cpu")
    denoiser = getattr(pipe, case.denoisers[0])
    assert hasattr(denoiser, "_hf_hook")  # accelerate's offload hook is in place
    offloaded = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    assert pipe.nag_report.active
    assert (offloaded - plain).abs().max().item() <= 1e-6
    nag.remove(pipe)
    assert hasattr(denoiser, "_hf_hook")  # removing NAG leaves the offload hooks alone
    generate(pipe, case)


def test_7_lora_loaded_after_apply(case):
    pipe = nag.apply(case.make())
    without_lora = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    torch.manual_seed(7)
    lora = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    for attr in case.denoisers:
        if getattr(pipe, attr, None) is not None:
            inject_adapter_in_model(lora, getattr(pipe, attr))
    with_lora = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    assert pipe.nag_report.active
    assert relative_diff(with_lora, without_lora) > 1e-4
    nag.remove(pipe)  # the same pipeline, LoRA still loaded, now checked against the reference
    expected, _ = reference(case, pipe, [NEGATIVE], cond_rows=1)
    assert relative_diff(with_lora, expected) <= 1e-5


def test_report_tells_what_nag_did(case):
    pipe = nag.apply(case.make())
    generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    report = pipe.nag_report
    assert report.family == case.family
    assert report.active and report.warnings == ()
    assert math.isfinite(report.mean_ratio) and report.mean_ratio > 0
    assert 0.0 <= report.clipped_fraction <= 1.0
    assert f"{report.layers_guided} layers" in str(report)
    generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG, "nag_start": 0.9, "nag_window": "steps"})
    assert not pipe.nag_report.active
    assert "window" in pipe.nag_report.warnings[-1]
