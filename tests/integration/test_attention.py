"""Attention with log-sum-exp and the merge over two key sets, against plain float64 attention."""

from __future__ import annotations

import math

import pytest
import torch

from nag_guidance.integration import attention
from nag_guidance.integration.attention import attention_with_lse, merge_attention


def plain(q, k, v, bias=None):
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    return torch.softmax(scores, -1) @ v.double(), torch.logsumexp(scores, -1)


def random_qkv(seed, sq=7, sk=11, heads=3, dim=8, batch=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, s, dim, generator=g) for s in (sq, sk, sk))


@pytest.mark.parametrize("seed", range(3))
def test_attention_with_lse_matches_plain(seed):
    q, k, v = random_qkv(seed)
    out, lse = attention_with_lse(q, k, v)
    ref_out, ref_lse = plain(q, k, v)
    assert torch.allclose(out.double(), ref_out, atol=1e-5)
    assert torch.allclose(lse.double(), ref_lse, atol=1e-5)


def test_boolean_and_additive_masks():
    q, k, v = random_qkv(3)
    keep = torch.rand(2, 1, 1, 11, generator=torch.Generator().manual_seed(0)) > 0.3
    keep[..., 0] = True
    bias = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    ref_out, ref_lse = plain(q, k, v, bias)
    for mask in (keep, bias):
        out, lse = attention_with_lse(q, k, v, mask)
        assert torch.allclose(out.double(), ref_out, atol=1e-5)
        assert torch.allclose(lse.double(), ref_lse, atol=1e-5)


@pytest.mark.parametrize("split", [1, 5, 10])
def test_merge_over_two_key_sets_equals_attention_over_their_union(split):
    q, k, v = random_qkv(split, sk=11)
    a = attention_with_lse(q, k[:, :, :split], v[:, :, :split])
    b = attention_with_lse(q, k[:, :, split:], v[:, :, split:])
    merged = merge_attention(a, b, into=torch.empty_like(q))
    assert torch.allclose(merged.double(), plain(q, k, v)[0], atol=1e-5)


def test_merge_writes_into_a_strided_view_and_in_low_precision():
    q, k, v = random_qkv(4)
    target = torch.zeros(2, 7, 3, 8)  # (B, S, H, D) storage, written through a (B, H, S, D) view
    a = attention_with_lse(q, k[:, :, :4], v[:, :, :4])
    b = attention_with_lse(q, k[:, :, 4:], v[:, :, 4:])
    merge_attention(a, b, into=target.transpose(1, 2))
    assert torch.allclose(target.transpose(1, 2).double(), plain(q, k, v)[0], atol=1e-5)
    low = merge_attention(
        (a[0].bfloat16(), a[1]), (b[0].bfloat16(), b[1]), into=torch.empty_like(q, dtype=torch.bfloat16)
    )
    assert torch.allclose(low.double(), plain(q, k, v)[0], atol=2e-2)


def test_fully_masked_rows_give_zeros_not_nan_in_the_plain_path():
    q, k, v = random_qkv(5)
    mask = torch.zeros(2, 1, 7, 11, dtype=torch.bool)
    mask[:, :, :3] = True  # queries 3..6 see no key at all
    out, lse = attention._plain(q, k, v, torch.zeros(mask.shape).masked_fill(~mask, float("-inf")), None)
    assert torch.isfinite(out).all() and (out[:, :, 3:] == 0).all()
    assert torch.isneginf(lse[:, :, 3:]).all()


def test_a_kernel_that_disagrees_is_never_used_again(monkeypatch):
    q, k, v = random_qkv(6)
    monkeypatch.setattr(attention, "_KERNEL_OK", {})
    monkeypatch.setattr(attention, "_kernel", lambda *args: (torch.zeros_like(q), torch.zeros(q.shape[:-1])))
    out, _ = attention_with_lse(q, k, v)
    assert attention._KERNEL_OK[("cpu", torch.float32)] is False
    assert torch.allclose(out.double(), plain(q, k, v)[0], atol=1e-5)
