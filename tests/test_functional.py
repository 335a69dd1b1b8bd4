import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nag_guidance.functional import (
    guidance_ratio,
    normalized_attention_guidance,
    normalized_attention_guidance_,
)


def reference_nag(z_pos, z_neg, scale, tau, alpha, eps=1e-6):
    """The formula written plainly, in float64, one token at a time (scale 1 means off)."""
    if scale == 1:
        return z_pos.double()
    z_pos = z_pos.double()
    z_neg = z_neg.double().expand_as(z_pos)
    out = torch.empty_like(z_pos)
    flat_pos, flat_neg, flat_out = (
        z_pos.reshape(-1, z_pos.shape[-1]),
        z_neg.reshape(-1, z_pos.shape[-1]),
        out.view(-1, z_pos.shape[-1]),
    )
    for i in range(flat_pos.shape[0]):
        pos, neg = flat_pos[i], flat_neg[i]
        tilde = scale * pos - (scale - 1) * neg
        r = tilde.abs().sum() / max(pos.abs().sum().item(), eps)
        clipped = tilde * (min(r, tau) / r) if r > 0 else tilde
        flat_out[i] = alpha * clipped + (1 - alpha) * pos
    return out


def rel_err(out, ref):
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


params = st.tuples(
    st.floats(1.0, 20.0),  # scale
    st.floats(0.05, 50.0),  # tau
    st.floats(0.0, 1.0),  # alpha
)
params_any_tau = st.tuples(
    st.floats(1.0, 20.0),
    st.one_of(st.floats(0.05, 50.0), st.just(math.inf)),  # tau; inf = never clip
    st.floats(0.0, 1.0),
)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 33)),
    p=params_any_tau,
    seed=st.integers(0, 2**31 - 1),
    neg_batch_one=st.booleans(),
)
def test_matches_float64_reference(shape, p, seed, neg_batch_one):
    scale, tau, alpha = p
    g = torch.Generator().manual_seed(seed)
    z_pos = torch.randn(shape, generator=g)
    z_neg = torch.randn((1, *shape[1:]) if neg_batch_one else shape, generator=g)
    out = normalized_attention_guidance(z_pos, z_neg, scale, tau, alpha)
    assert out.shape == z_pos.shape and out.dtype == z_pos.dtype
    assert rel_err(out, reference_nag(z_pos, z_neg, scale, tau, alpha)) < 1e-5


@settings(max_examples=40, deadline=None)
@given(p=params_any_tau, seed=st.integers(0, 2**31 - 1))
def test_in_place_variant_equals_out_of_place(p, seed):
    scale, tau, alpha = p
    g = torch.Generator().manual_seed(seed)
    z_pos, z_neg = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    expected, expected_r = normalized_attention_guidance(z_pos, z_neg, scale, tau, alpha, return_ratio=True)
    buffer = z_pos.clone()
    out, r = normalized_attention_guidance_(buffer, z_neg, scale, tau, alpha, return_ratio=True)
    assert out.data_ptr() == buffer.data_ptr()
    assert rel_err(out, expected.double()) < 1e-5
    torch.testing.assert_close(r, expected_r)


@pytest.mark.parametrize("in_place", [False, True])
def test_infinite_tau_is_pure_extrapolation_without_nan(in_place):
    z_pos, z_neg = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    z_pos[0, 0] = 0.0  # a zero-norm token too
    scale, alpha = 5.0, 0.5
    expected = alpha * (scale * z_pos - (scale - 1) * z_neg) + (1 - alpha) * z_pos
    op = normalized_attention_guidance_ if in_place else normalized_attention_guidance
    out = op(z_pos.clone(), z_neg, scale, math.inf, alpha)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)


def test_scale_one_is_identity_even_with_tight_tau():
    z_pos, z_neg = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    assert normalized_attention_guidance(z_pos, z_neg, 1.0, 0.1, 1.0) is z_pos
    assert normalized_attention_guidance_(z_pos.clone(), z_neg, 1.0, 0.1, 1.0).equal(z_pos)


def test_alpha_zero_is_identity():
    z_pos, z_neg = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    assert normalized_attention_guidance(z_pos, z_neg, 7.0, 2.5, 0.0).equal(z_pos)


def test_no_clip_when_ratio_below_tau_is_pure_extrapolation():
    z_pos, z_neg = torch.randn(3, 6, 32), torch.randn(3, 6, 32)
    scale, alpha = 3.0, 0.7
    tilde = scale * z_pos - (scale - 1) * z_neg
    tau = guidance_ratio(z_pos, tilde).max().item() * 1.01
    out = normalized_attention_guidance(z_pos, z_neg, scale, tau, alpha)
    torch.testing.assert_close(out, alpha * tilde + (1 - alpha) * z_pos)


@settings(max_examples=40, deadline=None)
@given(p=params, seed=st.integers(0, 2**31 - 1))
def test_output_norm_bounded_by_clip(p, seed):
    # ‖out‖₁ ≤ α·min(r, τ)‖Z+‖₁ + (1−α)‖Z+‖₁ ≤ (α·τ + 1 − α)·‖Z+‖₁ by the triangle inequality
    # (scale 1 is the identity, whatever τ).
    scale, tau, alpha = p
    if scale == 1:
        tau = 1.0
    g = torch.Generator().manual_seed(seed)
    z_pos, z_neg = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    out = normalized_attention_guidance(z_pos, z_neg, scale, tau, alpha)
    bound = (alpha * tau + 1 - alpha) * z_pos.abs().sum(-1)
    assert (out.abs().sum(-1) <= bound * (1 + 1e-5) + 1e-6).all()
    clipped = scale * z_pos - (scale - 1) * z_neg
    ratio = guidance_ratio(z_pos, clipped)
    guided_part = (out - (1 - alpha) * z_pos).abs().sum(-1, keepdim=True)
    assert (guided_part <= alpha * tau * z_pos.abs().sum(-1, keepdim=True) * (1 + 1e-5) + 1e-6).all()
    assert ratio.shape == (2, 5, 1)


@pytest.mark.parametrize("inplace", [False, True])
def test_zero_norm_tokens_stay_finite(inplace):
    fn = normalized_attention_guidance_ if inplace else normalized_attention_guidance
    zeros = torch.zeros(2, 3, 8)
    out = fn(zeros.clone(), zeros, 5.0, 2.5, 0.5)
    assert torch.isfinite(out).all() and out.abs().max() == 0
    z_neg = torch.randn(2, 3, 8)
    out = fn(zeros.clone(), z_neg, 5.0, 2.5, 0.5)
    assert torch.isfinite(out).all()
    # With ‖Z+‖₁ = 0 the clip bounds ‖Ẑ‖₁ by τ·ε = 2.5e-6: the output stays tiny, not an explosion
    # (the in-place form adds fp32 cancellation error of order 1e-7 on top).
    assert out.abs().sum(-1).max() <= 0.5 * 2.5 * 1e-6 + 1e-6


def test_negative_batch_one_broadcasts_like_explicit_expand():
    z_pos, z_neg = torch.randn(4, 5, 8), torch.randn(1, 5, 8)
    out = normalized_attention_guidance(z_pos, z_neg, 5.0, 2.5, 0.25)
    expected = normalized_attention_guidance(z_pos, z_neg.expand(4, 5, 8).clone(), 5.0, 2.5, 0.25)
    assert out.equal(expected)


def test_incompatible_shapes_raise():
    with pytest.raises(ValueError, match="does not broadcast"):
        normalized_attention_guidance(torch.randn(1, 5, 8), torch.randn(2, 5, 8), 5.0, 2.5, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": 0.5}, "scale"),
        ({"tau": 0.0}, "tau"),
        ({"alpha": 1.5}, "alpha"),
        ({"scale": math.nan}, "scale"),
    ],
)
def test_invalid_parameters_raise(kwargs, match):
    args = {"scale": 5.0, "tau": 2.5, "alpha": 0.25} | kwargs
    with pytest.raises(ValueError, match=match):
        normalized_attention_guidance(torch.randn(1, 2, 4), torch.randn(1, 2, 4), **args)


# Tolerances: the op computes in fp32 and rounds once to the output dtype, so the error is about one
# unit of the dtype's precision relative to the largest value (fp16: 2^-11, bf16: 2^-8).
DTYPE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
@pytest.mark.parametrize("inplace", [False, True])
def test_dtype_matrix(dtype, inplace):
    g = torch.Generator().manual_seed(0)
    z_pos, z_neg = (
        torch.randn(2, 64, 96, generator=g).to(dtype),
        torch.randn(2, 64, 96, generator=g).to(dtype),
    )
    ref = reference_nag(z_pos, z_neg, 5.0, 2.5, 0.5)
    fn = normalized_attention_guidance_ if inplace else normalized_attention_guidance
    out = fn(z_pos.clone(), z_neg, 5.0, 2.5, 0.5)
    assert out.dtype == dtype
    tolerance = DTYPE_TOLERANCE[dtype] * (4 if inplace and dtype != torch.float32 else 1)
    assert rel_err(out, ref) < tolerance


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, b: normalized_attention_guidance(a, b, 5.0, 2.5, 0.25, return_ratio=True),
        fullgraph=True,
    )
    z_pos, z_neg = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    z_pos[0, 0] = 0  # a zero-norm token must not need a data-dependent branch
    out, ratio = compiled(z_pos, z_neg)
    expected, expected_ratio = normalized_attention_guidance(z_pos, z_neg, 5.0, 2.5, 0.25, return_ratio=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ratio, expected_ratio, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inplace", [False, True])
def test_fp16_beyond_its_range_saturates_instead_of_overflowing(inplace):
    """s = 1000, τ = ∞ on |z| ≈ 100 extrapolates to ~1e5, past fp16's 65504: the result saturates there (what the
    fp32 computation gives, rounded to the nearest finite fp16) instead of turning inf, and NaN a layer later."""
    g = torch.Generator().manual_seed(0)
    z_pos, z_neg = ((100 * torch.randn(2, 16, 64, generator=g)).half() for _ in range(2))
    fn = normalized_attention_guidance_ if inplace else normalized_attention_guidance
    out = fn(z_pos.clone(), z_neg, 1000.0, math.inf, 0.5)
    limit = torch.finfo(torch.float16).max
    assert torch.isfinite(out).all() and (out.abs() == limit).any()
    exact = 0.5 * (1000.0 * z_pos.float() - 999.0 * z_neg.float()) + 0.5 * z_pos.float()
    assert torch.equal(out, exact.clamp(-limit, limit).half())


def test_compiles_without_graph_breaks_in_fp16():
    torch._dynamo.reset()

    def guide(a, b):
        return normalized_attention_guidance(a, b, 1000.0, math.inf, 0.5)

    z_pos, z_neg = (100 * torch.randn(2, 16, 32)).half(), (100 * torch.randn(2, 16, 32)).half()
    torch.testing.assert_close(torch.compile(guide, fullgraph=True)(z_pos, z_neg), guide(z_pos, z_neg))
