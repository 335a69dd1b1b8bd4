"""diffusers attention backends (``set_attention_backend``) on applied pipelines.

Cross-attention families run both branches through the processor itself, so on the configured backend. The joint
families' guided call needs each partial attention's log-sum-exp and runs on PyTorch's fused kernels: with
another backend configured, that is said (a one-time warning, a note in every affected report), never silent.
"""

from __future__ import annotations

import warnings

import pytest
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

import nag_guidance as nag

from .cases import BY_ID
from .helpers import generate, relative_diff
from .joint_cases import JOINT_CASES

NAG = {"nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}
NEGATIVE = "blurry dog"
JOINT = {case.id: case for case in JOINT_CASES}
BACKENDS = ["_native_math", "native"]


@pytest.fixture(autouse=True)
def _restore_the_active_backend():
    """``set_attention_backend`` also sets diffusers' process-wide active backend: put it back."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


def _guided(case, backend: str | None):
    pipe = nag.apply(case.make())
    if backend is not None:
        getattr(pipe, case.denoisers[0]).set_attention_backend(backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate(pipe, case, nag={"nag_negative_prompt": NEGATIVE, **NAG})
    return out, pipe.nag_report, [str(w.message) for w in caught if "attention backend" in str(w.message)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case_id", ["flux", "qwen-image"])
def test_joint_families_say_when_the_guided_call_leaves_the_backend(case_id, backend):
    case = JOINT[case_id]
    default, _, _ = _guided(case, None)
    out, report, warned = _guided(case, backend)
    assert relative_diff(out, default) < 1e-4
    noted = [w for w in report.warnings if "attention backend" in w]
    if backend == "native":
        assert noted == [] and warned == []
    else:
        assert report.active and len(noted) == 1 and backend in noted[0]


@pytest.mark.parametrize("case_id", ["wan21-t2v"])
def test_cross_families_run_on_the_configured_backend(case_id):
    case = BY_ID[case_id]
    default, _, _ = _guided(case, None)
    out, report, warned = _guided(case, "_native_math")
    assert relative_diff(out, default) < 1e-4
    assert report.active and report.warnings == () and warned == []
