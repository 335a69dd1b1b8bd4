"""The pipelines around an already-guided denoiser (``variant_cases``): every one built tiny and called once with
NAG on (the smoke rows), and one per branch structure checked against the float64 reference."""

from __future__ import annotations

import pytest
import torch

import nag_guidance as nag
from nag_guidance.integration.families import detect
from tests.integration.helpers import ForwardRecorder, hook_snapshot, relative_diff
from tests.integration.reference import ReferenceNAG
from tests.integration.variant_cases import CONTRACT, VARIANTS, Variant, tensor_of

torch.set_num_threads(1)

NAG = dict(nag_scale=5.0, nag_tau=2.5, nag_alpha=0.5)
NEGATIVE = "blurry dog"


def run(pipe, variant: Variant, prompt="a red car", nag_args: dict | None = None, **call) -> torch.Tensor:
    out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **variant.kwargs(**call), **(nag_args or {}))
    return tensor_of(out)


def encode_negative(pipe, negatives: list[str]) -> torch.Tensor:
    """The negative as the UNet takes its text, encoded by the pipeline's own encode method without CFG."""
    device = torch.device("cpu")
    if not hasattr(pipe, "encode_prompt"):  # SD InstructPix2Pix
        return pipe._encode_prompt(negatives, device, 1, False)
    return pipe.encode_prompt(negatives, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]


def reference(variant: Variant, negatives: list[str], cond_rows: int, **call) -> torch.Tensor:
    pipe = variant.make()
    ReferenceNAG(
        (variant.denoiser,),
        "attn2",
        "encoder_hidden_states",
        None,
        (encode_negative(pipe, negatives), None),
        NAG["nag_scale"],
        NAG["nag_tau"],
        NAG["nag_alpha"],
        cond_rows * variant.rows_per_prompt,
        rows_of=variant.cond,
        skip="motion_modules",
    ).install(pipe)
    return run(pipe, variant, **call)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_every_variant_is_guided_once(variant):
    pipe = variant.make()
    assert detect(pipe).name == variant.family
    nag.apply(pipe)
    run(pipe, variant, nag_args={"nag_negative_prompt": NEGATIVE, **NAG})
    report = pipe.nag_report
    assert report.active and report.warnings == (), report.warnings
    assert report.family == variant.family


@pytest.mark.parametrize("variant", CONTRACT, ids=[v.id for v in CONTRACT])
def test_variant_contract(variant):
    pipe = variant.make()
    stock = run(pipe, variant)
    recorder = ForwardRecorder([getattr(pipe, variant.denoiser)])
    run(pipe, variant)
    recorder.close()
    stock_first = recorder.outputs[0]
    before = hook_snapshot(getattr(pipe, variant.denoiser))
    nag.apply(pipe)
    # off: scale 1 runs the stock pipeline
    off = run(pipe, variant, nag_args={"nag_negative_prompt": NEGATIVE, "nag_scale": 1.0})
    assert (off - stock).abs().max().item() <= 1e-6
    # on: equal to the float64 reference, which guides the variant's prompt rows only
    recorder = ForwardRecorder([getattr(pipe, variant.denoiser)])
    guided = run(pipe, variant, nag_args={"nag_negative_prompt": NEGATIVE, **NAG})
    recorder.close()
    assert pipe.nag_report.active and pipe.nag_report.warnings == ()
    assert relative_diff(guided, reference(variant, [NEGATIVE], 1)) <= 1e-5
    # the other branches of the first forward (CFG's uncond, PAG's perturbed, pix2pix's image-only) are stock
    first = recorder.outputs[0]
    rows = variant.cond(first.shape[0], 1)  # output rows: one per prompt (a video is one row)
    others = [r for r in range(first.shape[0]) if not rows.start <= r < rows.stop]
    assert others and (first[others] - stock_first[others]).abs().max().item() <= 1e-6
    assert relative_diff(first[rows], stock_first[rows]) > 1e-4
    # batch 2: two prompts, one negative each
    prompts, negatives = ["a red car", "a blue cat"], ["blurry dog", "grey"]
    both = run(pipe, variant, prompts, {"nag_negative_prompt": negatives, **NAG})
    assert relative_diff(both, reference(variant, negatives, 2, prompt=prompts)) <= 1e-5
    # remove: the stock objects and output again
    nag.remove(pipe)
    assert hook_snapshot(getattr(pipe, variant.denoiser)) == before
    assert (run(pipe, variant) - stock).abs().max().item() <= 1e-6
