"""diffusers attention backends (``set_attention_backend``) on applied pipelines.

Cross-attention families run both branches through the processor itself, so on the configured backend. The joint
families' guided call needs each partial attention's log-sum-exp: it gets it from the configured backend
(diffusers' dispatch with ``return_lse=True``, else PyTorch's own kernel of that backend), and where the backend
cannot give it, it runs on PyTorch's fused kernels and says so (a one-time warning, a note in every affected
report), never silently. Every backend that runs on this CPU is checked against the float64 references.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

import nag_guidance as nag
from nag_guidance.integration import attention, joint_attention

from . import test_cross_attention, test_joint_attention
from .cases import BY_ID
from .helpers import generate, relative_diff
from .joint_cases import JOINT_CASES

NAG = {"nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}
NEGATIVE = "blurry dog"
JOINT = {case.id: case for case in JOINT_CASES}
CPU_BACKENDS = ["native", "_native_math", "_native_flash", "flex"]


@pytest.fixture(autouse=True)
def _fresh_backend_state(monkeypatch):
    """``set_attention_backend`` also sets diffusers' process-wide active backend: put it back; and forget which
    backends gave a log-sum-exp, so that each test sees its own first use."""
    active = _AttentionBackendRegistry._active_backend
    monkeypatch.setattr(attention, "_BACKEND_SOURCE", {})
    monkeypatch.setattr(joint_attention, "_WARNED_BACKENDS", set())
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


def _counted(monkeypatch, backend: str) -> list[int]:
    """Count the calls of ``attention``'s PyTorch kernel of a backend."""
    calls: list[int] = []
    kernel = attention._TORCH_KERNELS[backend]

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setitem(attention._TORCH_KERNELS, backend, counting)
    return calls


@pytest.mark.compat("Attention backends", "set_attention_backend: native, _native_math, _native_flash, flex", "equal")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case_id", ["flux", "qwen-image"])
def test_joint_families_guide_on_every_cpu_backend(monkeypatch, case_id, backend):
    """Every backend that runs on CPU: NAG equals the float64 reference (1e-5), the guided joint call's partial
    attentions run on the backend's own kernel (counted), and there is nothing to warn about."""
    case = JOINT[case_id]
    calls = _counted(monkeypatch, backend) if backend in attention._TORCH_KERNELS else None
    out, report, warned = _guided(case, backend)
    expected, _ = test_joint_attention.reference(case, NEGATIVE)
    assert relative_diff(out, expected) <= 1e-5
    assert report.active and report.warnings == () and warned == []
    if calls is not None:  # 7 parts per guided layer and forward: every one on the backend's kernel
        assert len(calls) >= 7 * report.layers_guided > 0


@pytest.mark.compat("Attention backends", "set_attention_backend: native, _native_math, _native_flash, flex", "equal")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case_id", ["wan21-t2v"])
def test_cross_families_guide_on_every_cpu_backend(case_id, backend):
    """Every backend that runs on CPU: NAG equals the float64 reference (1e-5), both branches run in the stock
    processor on the configured backend, and there is nothing to warn about."""
    case = BY_ID[case_id]
    out, report, warned = _guided(case, backend)
    expected, _ = test_cross_attention.reference(case, case.make(), [NEGATIVE], cond_rows=1)
    assert relative_diff(out, expected) <= 1e-5
    assert report.active and report.warnings == () and warned == []


def _fake_backend(monkeypatch, gives_lse: bool, heads_last: bool = True, takes_return_lse: bool = True) -> list[bool]:
    """Stand in for a GPU-only backend (sage) with a CPU one: plain attention that returns the log-sum-exp when
    asked, as (B, S, H) like sage and FA3 or (B, H, S) like flash-attn 2, or refuses ``return_lse`` as xformers
    does, or has no such argument (dispatch then drops it, as for ``_flash_3_hub``). Records each call's
    ``return_lse``."""
    asked: list[bool] = []

    def fake(query, key, value, attn_mask=None, scale=None, return_lse=False, _parallel_config=None):
        asked.append(return_lse)
        if return_lse and not gives_lse:
            raise ValueError("this backend does not support return_lse=True")
        out, lse = attention._plain(*(t.transpose(1, 2) for t in (query, key, value)), attn_mask, scale)
        out = out.transpose(1, 2)
        return (out, lse.transpose(1, 2) if heads_last else lse) if return_lse else out

    name = AttentionBackendName.SAGE
    arguments = {"query", "key", "value", "attn_mask", "scale", "_parallel_config"}
    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, fake)
    monkeypatch.setitem(_AttentionBackendRegistry._constraints, name, [])
    monkeypatch.setitem(
        _AttentionBackendRegistry._supported_arg_names,
        name,
        arguments | ({"return_lse"} if takes_return_lse else set()),
    )
    monkeypatch.setattr("diffusers.models.attention_dispatch._check_attention_backend_requirements", lambda b: None)
    return asked


@pytest.mark.compat("Attention backends", "a backend that returns the log-sum-exp (flash-attn, FA3, sage)", "equal")
@pytest.mark.parametrize("case_id", ["flux"])
def test_a_backend_that_returns_the_lse_is_used_through_diffusers_dispatch(monkeypatch, case_id):
    """A GPU backend stood in for by a CPU one registered as sage: the guided joint call's parts go through
    diffusers' ``dispatch_attention_fn(..., return_lse=True)`` on it, and NAG equals the float64 reference."""
    asked = _fake_backend(monkeypatch, gives_lse=True)
    case = JOINT[case_id]
    out, report, warned = _guided(case, "sage")
    expected, _ = test_joint_attention.reference(case, NEGATIVE)
    assert relative_diff(out, expected) <= 1e-5
    assert report.warnings == () and warned == []
    assert asked.count(True) >= 4 * report.layers_guided  # the guided call's parts went through the backend


@pytest.mark.compat("Attention backends", "a backend without log-sum-exp (xformers, NPU, XLA)", "equal")
@pytest.mark.parametrize("case_id", ["flux"])
def test_a_backend_without_lse_is_said_once_and_noted_in_each_report(monkeypatch, case_id):
    """A backend that refuses ``return_lse`` (stood in for on CPU): the guided joint call runs on PyTorch's fused
    kernels, NAG equals the float64 reference, and that is said: one warning, a note in every report."""
    asked = _fake_backend(monkeypatch, gives_lse=False)
    case = JOINT[case_id]
    out, report, warned = _guided(case, "sage")
    expected, _ = test_joint_attention.reference(case, NEGATIVE)
    assert relative_diff(out, expected) <= 1e-5
    assert asked.count(True) == 1  # asked once: the refusal is remembered
    noted = [w for w in report.warnings if "attention backend" in w]
    assert report.active and len(noted) == 1 and "'sage'" in noted[0] and len(warned) == 1
    _, again, warned_again = _guided(case, "sage")
    assert len([w for w in again.warnings if "attention backend" in w]) == 1 and warned_again == []


def test_a_backend_kernel_is_checked_on_first_use_and_dropped_if_it_disagrees(monkeypatch):
    def wrong(q, k, v, mask, scale):
        out, lse = attention._plain(q, k, v, mask, scale)
        return out + 1.0, lse

    monkeypatch.setitem(attention._TORCH_KERNELS, "_native_math", wrong)
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    run = attention.BackendAttention("_native_math")
    out, _ = run(q, k, v, None, None)
    assert run.fallback == attention.NO_LSE
    assert torch.allclose(out, attention._plain(q, k, v, None, None)[0], atol=1e-5)
    assert attention._BACKEND_SOURCE[("_native_math", "cpu", torch.float32, False)] is None


@pytest.mark.parametrize("heads_last", [True, False], ids=["lse-BSH", "lse-BHS"])
def test_the_lse_layout_is_learnt_even_when_heads_equal_the_query_length(monkeypatch, heads_last):
    _fake_backend(monkeypatch, gives_lse=True, heads_last=heads_last)
    q, k, v = torch.randn(2, 4, 4, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)  # 4 heads, 4 queries
    run = attention.BackendAttention("sage")
    out, lse = run(q, k, v, None, None)
    expected = attention._plain(q, k, v, None, None)
    assert run.fallback is None
    assert torch.allclose(out, expected[0], atol=1e-5) and torch.allclose(lse, expected[1], atol=1e-5)


def test_a_backend_that_drops_return_lse_is_a_fallback_not_a_crash(monkeypatch):
    _fake_backend(monkeypatch, gives_lse=True, takes_return_lse=False)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)  # batch 2 unpacks, too
    run = attention.BackendAttention("sage")
    out, _ = run(q, k, v, None, None)
    assert run.fallback == attention.NO_LSE
    assert torch.allclose(out, attention._plain(q, k, v, None, None)[0], atol=1e-5)


@pytest.mark.parametrize("backend", ["_native_math", "_native_flash", "flex"])
def test_masked_parts_run_on_the_backend_kernel(monkeypatch, backend):
    calls = _counted(monkeypatch, backend)
    q, k, v = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    keys = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    keys[0, ..., 4:] = False  # the first row's padded text keys
    run = attention.BackendAttention(backend)
    out, lse = run(q, k, v, keys, None)
    expected = attention._plain(q, k, v, attention._additive(keys, q), None)
    assert run.fallback is None and len(calls) == 1
    assert torch.allclose(out, expected[0], atol=1e-5) and torch.allclose(lse, expected[1], atol=1e-5)


def test_under_compile_a_backend_is_used_once_it_ran_eagerly(monkeypatch):
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))

    def run_with(run):
        return run(q, k, v, None, None)[0]

    traced = attention.BackendAttention("_native_math")
    torch.compile(run_with, fullgraph=True)(traced)
    assert traced.fallback == attention.NOT_CHECKED  # said as "not checked", not "gives no lse"
    attention.BackendAttention("_native_math")(q, k, v, None, None)  # one eager use checks it
    torch._dynamo.reset()
    compiled = attention.BackendAttention("_native_math")
    out = torch.compile(run_with, fullgraph=True)(compiled)
    assert compiled.fallback is None and torch.allclose(out, attention._plain(q, k, v, None, None)[0], atol=1e-5)
