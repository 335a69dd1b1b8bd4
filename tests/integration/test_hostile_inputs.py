"""Hostile inputs to applied pipelines, on every family: misspelt NAG keywords, negative embeddings of the wrong
width or dtype, negative counts that do not fit precomputed prompt embeddings, out-of-range and exotic numbers, and
a second call on a pipeline that is still running one. Each is refused with a clear error before any compute."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import nag_guidance as nag
from nag_guidance.integration.registry import registered_families
from tests.integration.cases import BY_ID as CROSS
from tests.integration.cases import CASES
from tests.integration.helpers import ForwardRecorder, generate
from tests.integration.joint_cases import JOINT_CASES

ALL = [*CASES, *JOINT_CASES]
FAMILIES = registered_families()


def _denoisers(pipe, case) -> list[torch.nn.Module]:
    return [getattr(pipe, a) for a in case.denoisers if getattr(pipe, a, None) is not None]


def _refused(pipe, case, error: type[Exception], match: str, **nag_args) -> None:
    """The call raises ``error`` and no denoiser forward ran."""
    calls = ForwardRecorder(_denoisers(pipe, case))
    try:
        with pytest.raises(error, match=match):
            pipe(prompt="a red car", generator=torch.Generator().manual_seed(0), **case.kwargs(), **nag_args)
    finally:
        calls.close()
    assert calls.outputs == []
    assert pipe._nag_session.state.call is None


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
def test_every_family_refuses_misspelt_nag_keywords(case):
    pipe = nag.apply(case.make())
    _refused(pipe, case, TypeError, r"unknown NAG argument\(s\) \['nag_scael'\]", nag_negative_prompt="x", nag_scael=10)


WIDTH_CASES = [c for c in ALL if FAMILIES[c.family].text_width is not None]


@pytest.mark.parametrize("case", WIDTH_CASES, ids=lambda c: c.id)
def test_negative_embeddings_of_the_wrong_width_or_dtype_are_refused(case):
    pipe = nag.apply(case.make())
    family = FAMILIES[case.family]
    width = getattr(_denoisers(pipe, case)[0].config, family.text_width)
    wrong = torch.zeros(1, 7, width + 3)
    _refused(pipe, case, ValueError, f"{width + 3} channels.*width {width}", nag_negative_prompt_embeds=wrong)
    for dtype in (torch.int64, torch.bool):
        bad = torch.zeros(1, 7, width, dtype=dtype)
        _refused(pipe, case, ValueError, "must be floating point", nag_negative_prompt_embeds=bad)


def test_the_width_check_covers_every_family_whose_embeddings_reach_the_denoiser():
    unchecked = sorted(name for name, family in FAMILIES.items() if family.text_width is None)
    assert unchecked == ["hidream", "ltx2"]  # HiDream's text is two encoders' parts; LTX-2's passes connectors


@pytest.mark.parametrize("case_id", ["sd15", "pixart-sigma"])
def test_negative_count_is_checked_against_precomputed_prompt_embeddings(case_id):
    case = CROSS[case_id]
    pipe = nag.apply(case.make())
    embeds, mask = case.encode_negative(pipe, ["a", "b", "c", "d"])
    call = {"prompt_embeds": embeds} if mask is None else {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    calls = ForwardRecorder(_denoisers(pipe, case))
    with pytest.raises(ValueError, match="got 2 NAG negatives for 4 prompt"):
        pipe(**call, nag_negative_prompt=["x", "y"], **case.kwargs())
    calls.close()
    assert calls.outputs == []
    pipe(**call, nag_negative_prompt=["w", "x", "y", "z"], **case.kwargs())  # one per prompt row is fine
    assert pipe.nag_report.active


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1e300, "1 <= scale <= 1000"),
        (float("inf"), "1 <= scale <= 1000"),
        (float("nan"), "1 <= scale"),
        (1000.5, "1 <= scale"),
        (np.array([5.0]), "real number"),
        ("5", "real number"),
        (True, "real number"),
    ],
)
def test_out_of_range_scales_are_refused_before_compute(value, error):
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    _refused(pipe, case, ValueError, error, nag_negative_prompt="x", nag_scale=value)


@pytest.mark.parametrize("value", [np.float32(5.0), np.float64(5.0), np.int32(5), torch.tensor(5.0)])
def test_numpy_and_tensor_scalars_are_accepted(value):
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    expected = generate(pipe, case, nag={"nag_negative_prompt": "x", "nag_scale": 5.0})
    assert torch.equal(generate(pipe, case, nag={"nag_negative_prompt": "x", "nag_scale": value}), expected)
    assert pipe.nag_report.config.scale == 5.0


def test_largest_scale_runs_and_stays_finite():
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    out = generate(pipe, case, nag={"nag_negative_prompt": "x", "nag_scale": 1000.0})
    assert torch.isfinite(out).all() and pipe.nag_report.active


def test_a_second_concurrent_call_is_refused_and_the_first_is_unharmed():
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    alone = generate(pipe, case, nag={"nag_negative_prompt": "x"})
    inside, release, errors = threading.Event(), threading.Event(), []

    def wait_in_first_step(_pipe, step, _timestep, callback_kwargs):
        if step == 0:
            inside.set()
            release.wait(timeout=60)
        return callback_kwargs

    result = {}

    def first() -> None:
        result["out"] = generate(pipe, case, nag={"nag_negative_prompt": "x"}, callback_on_step_end=wait_in_first_step)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(timeout=60)
    for nag_args in ({"nag_negative_prompt": "y"}, {}):  # NAG or stock: both would read the first call's state
        try:
            generate(pipe, case, nag=nag_args)
        except RuntimeError as error:
            errors.append(str(error))
    release.set()
    thread.join(timeout=120)
    assert len(errors) == 2 and all("already running a call" in e for e in errors)
    assert torch.equal(result["out"], alone)
    generate(pipe, case, nag={"nag_negative_prompt": "x"})  # the pipeline is free again
