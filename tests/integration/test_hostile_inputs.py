"""Hostile inputs to applied pipelines, on every family: misspelt NAG keywords, negative embeddings of the wrong
width or dtype, negative counts that do not fit precomputed prompt embeddings, out-of-range and exotic numbers, and
a second call on a pipeline that is still running one. Each is refused with a clear error before any compute."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import nag_guidance as nag
from nag_guidance.integration.families import registered_families
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
    assert not pipe._nag_session.handle.active


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.id)
def test_every_family_refuses_misspelt_nag_keywords(case):
    pipe = nag.apply(case.make())
    _refused(pipe, case, TypeError, r"unknown NAG argument\(s\) \['nag_scael'\]", nag_negative_prompt="x", nag_scael=10)


WIDTH_CASES = [c for c in ALL if FAMILIES[c.family].text_width]


@pytest.mark.parametrize("case", WIDTH_CASES, ids=lambda c: c.id)
def test_negative_embeddings_of_the_wrong_width_or_dtype_are_refused(case):
    pipe = nag.apply(case.make())
    family = FAMILIES[case.family]
    width = family.width_of(_denoisers(pipe, case)[0])
    wrong = torch.zeros(1, 7, width + 3)
    _refused(pipe, case, ValueError, f"{width + 3} channels.*width {width}", nag_negative_prompt_embeds=wrong)
    for dtype in (torch.int64, torch.bool):
        bad = torch.zeros(1, 7, width, dtype=dtype)
        _refused(pipe, case, ValueError, "must be floating point", nag_negative_prompt_embeds=bad)


def test_the_width_check_covers_every_family_whose_embeddings_reach_the_denoiser():
    unchecked = sorted(name for name, family in FAMILIES.items() if not family.text_width)
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


def _width(pipe, case) -> int:
    return FAMILIES[case.family].width_of(_denoisers(pipe, case)[0])


BAD_EMBEDDINGS = {  # name -> (embeddings from the width, match)
    "2-D": (lambda w: torch.zeros(7, w), "shape \\(rows, tokens, channels\\)"),
    "a list": (lambda w: [[0.0] * w], "shape \\(rows, tokens, channels\\)"),
    "no rows": (lambda w: torch.zeros(0, 7, w), "no rows or no tokens"),
    "no tokens": (lambda w: torch.zeros(1, 0, w), "no rows or no tokens"),
    "meta": (lambda w: torch.zeros(1, 7, w, device="meta"), "meta device"),
    "NaN": (lambda w: torch.full((1, 7, w), float("nan")), "NaN or infinite"),
    "inf": (lambda w: torch.full((1, 7, w), float("inf")), "NaN or infinite"),
    "int64": (lambda w: torch.zeros(1, 7, w, dtype=torch.int64), "floating point"),
}


@pytest.mark.parametrize("bad", sorted(BAD_EMBEDDINGS))
@pytest.mark.parametrize("door", ["pipeline", "denoiser", "guider"])
def test_every_door_refuses_bad_negative_embeddings_before_compute(door, bad):
    """The pipeline, denoiser and guider doors share one check of negative embeddings: each bad kind is a clear
    ValueError before any forward, and a refused begin leaves the handle idle."""
    case = CROSS["sd15"]
    pipe = case.make()
    make, match = BAD_EMBEDDINGS[bad]
    embeds = make(pipe.unet.config.cross_attention_dim)
    if door == "pipeline":
        nag.apply(pipe)
        _refused(pipe, case, ValueError, match, nag_negative_prompt_embeds=embeds)
        return
    calls = ForwardRecorder([pipe.unet])
    if door == "denoiser":
        handle = nag.attach(pipe.unet, "sd")
        with pytest.raises(ValueError, match=match):
            handle.begin(embeds)
        assert not handle.active
        handle.remove()
    else:
        guider = nag.NormalizedAttentionGuidance(family="sd")
        guider.set_negative(embeds)
        guider.set_state(0, 2, torch.tensor(999))
        with pytest.raises(ValueError, match=match):
            guider.prepare_models(pipe.unet)
        guider.remove()
    calls.close()
    assert calls.outputs == []


def test_a_negative_mask_of_the_wrong_shape_is_refused_at_every_door():
    case = CROSS["sd15"]
    pipe = case.make()
    embeds, bad_mask = torch.zeros(1, 7, 32), torch.ones(1, 6)
    handle = nag.attach(pipe.unet, "sd")
    with pytest.raises(ValueError, match="attention mask must have shape \\(1, 7\\)"):
        handle.begin(embeds, bad_mask)
    handle.remove()
    nag.apply(pipe)
    _refused(
        pipe,
        case,
        ValueError,
        "mask must have shape",
        nag_negative_prompt_embeds=embeds,
        nag_negative_prompt_attention_mask=bad_mask,
    )


@pytest.mark.parametrize("value", [7, 3.5, {"a": 1}, [], ["x", 3]])
def test_a_negative_prompt_that_is_not_text_is_a_value_error(value):
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    _refused(pipe, case, ValueError, "string or a non-empty list of strings", nag_negative_prompt=value)


FLUX = next(c for c in JOINT_CASES if c.id == "flux")


@pytest.mark.parametrize(
    ("pooled", "nag_pooled", "match"),
    [
        (lambda w: torch.zeros(1, w + 1), "negative", "pooled vector has width"),
        (lambda w: torch.zeros(1, w, dtype=torch.int64), "negative", "floating point"),
        (lambda w: torch.full((1, w), float("nan")), "negative", "NaN or infinite"),
        (lambda w: torch.zeros(1, w), "prompt", "only used with pooled='negative'"),
    ],
    ids=["wrong-width", "int64", "NaN", "unused"],
)
def test_bad_or_unused_negative_pooled_vectors_are_refused(pooled, nag_pooled, match):
    """Flux's negative pooled vector: checked for width and values when it is used (pooled='negative'), refused
    when the call would ignore it."""
    pipe = nag.apply(FLUX.make())
    embeds = torch.zeros(1, 7, _width(pipe, FLUX))
    width = pipe.transformer.config.pooled_projection_dim
    _refused(
        pipe,
        FLUX,
        ValueError,
        match,
        nag_negative_prompt_embeds=embeds,
        nag_negative_pooled_prompt_embeds=pooled(width),
        nag_pooled=nag_pooled,
    )


def test_a_pooled_vector_on_a_family_without_one_is_refused():
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    _refused(
        pipe,
        case,
        ValueError,
        "only used with pooled='negative'",
        nag_negative_prompt_embeds=torch.zeros(1, 7, 32),
        nag_negative_pooled_prompt_embeds=torch.zeros(1, 32),
    )


def test_a_refused_call_clears_the_previous_report():
    case = CROSS["sd15"]
    pipe = nag.apply(case.make())
    generate(pipe, case, nag={"nag_negative_prompt": "x"})
    assert pipe.nag_report.active
    _refused(pipe, case, ValueError, "floating point", nag_negative_prompt_embeds=torch.zeros(1, 7, 32, dtype=int))
    assert pipe.nag_report is None


def test_an_empty_preset_name_is_refused():
    with pytest.raises(ValueError, match="preset"):
        nag.apply(CROSS["sd15"].make(), preset="")


IGNORING_MASKS = [c for c in ALL if not FAMILIES[c.family].takes_negative_mask(None) and FAMILIES[c.family].text_width]


@pytest.mark.parametrize("case", IGNORING_MASKS, ids=lambda c: c.id)
def test_a_negative_mask_the_family_would_ignore_is_refused(case):
    """Families whose text path reads no negative mask (Flux without pooled='negative', SD3, Wan ...) refuse one
    before compute: an all-zero mask used to change nothing, silently."""
    pipe = nag.apply(case.make())
    width = _width(pipe, case)
    _refused(
        pipe,
        case,
        ValueError,
        "takes no text mask",
        nag_negative_prompt_embeds=torch.zeros(1, 7, width),
        nag_negative_prompt_attention_mask=torch.zeros(1, 7),
    )
