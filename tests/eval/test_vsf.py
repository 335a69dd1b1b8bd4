"""VSF (Value Sign Flip): the attention math against a float64 re-computation, its no-op, and the UNet wrapping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nag_guidance.eval.vsf import (
    VSFAttnProcessor,
    apply_vsf,
    negative_token_mask,
    remove_vsf,
    value_sign_flip_attention,
)
from nag_guidance.testing.image import make_sd

torch.set_num_threads(1)


def _inputs(batch=2, heads=3, n=5, lp=7, ln=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, kp, vp = (torch.randn(batch, heads, m, d, generator=g) for m in (n, lp, lp))
    kn, vn = (torch.randn(batch, heads, ln, d, generator=g) for _ in range(2))
    return q, kp, vp, kn, vn


def _reference(q, kp, vp, kn, vn, alpha, bias, keep):
    """Token by token in float64: weights over [pos, kept neg], negative values times -alpha."""
    q, kp, vp, kn, vn = (t.double() for t in (q, kp, vp, kn, vn))
    b, h, n, d = q.shape
    out = torch.zeros(b, h, n, d, dtype=torch.float64)
    for i in range(b):
        kept = [j for j in range(kn.shape[2]) if keep[i][j]]
        keys = torch.cat([kp[i], kn[i][:, kept]], dim=1)  # (H, Lp + k, D)
        values = torch.cat([vp[i], -alpha * vn[i][:, kept]], dim=1)
        logits = q[i] @ keys.transpose(1, 2) / math.sqrt(d)
        logits[:, :, kp.shape[2] :] += bias
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        out[i] = (weights / weights.sum(-1, keepdim=True)) @ values
    return out


@pytest.mark.parametrize("alpha,bias", [(3.5, -0.1), (1.0, 0.0), (0.0, 0.3)])
def test_matches_float64_recomputation(alpha, bias):
    q, kp, vp, kn, vn = _inputs()
    keep = torch.tensor([[True, True, False, True], [True, False, False, False]])
    got = value_sign_flip_attention(q, kp, vp, kn, vn, alpha, neg_mask=keep, bias=bias)
    torch.testing.assert_close(got, _reference(q, kp, vp, kn, vn, alpha, bias, keep.tolist()).float())
    # a 1-D mask applies to every row
    got1 = value_sign_flip_attention(q, kp, vp, kn, vn, alpha, neg_mask=keep[0], bias=bias)
    torch.testing.assert_close(got1, _reference(q, kp, vp, kn, vn, alpha, bias, [keep[0].tolist()] * 2).float())


def test_no_negative_token_is_plain_attention():
    """No scale makes VSF a no-op (the negative tokens still take softmax mass); no kept token or bias -inf does."""
    q, kp, vp, kn, vn = _inputs(seed=1)
    plain = F.scaled_dot_product_attention(q, kp, vp)
    none = torch.zeros(kn.shape[2], dtype=torch.bool)
    torch.testing.assert_close(value_sign_flip_attention(q, kp, vp, kn, vn, 2.0, neg_mask=none), plain)
    torch.testing.assert_close(value_sign_flip_attention(q, kp, vp, kn, vn, 0.0, bias=float("-inf")), plain)
    assert not torch.allclose(value_sign_flip_attention(q, kp, vp, kn, vn, 0.0), plain, atol=1e-4)


@pytest.fixture(scope="module")
def sd():
    pipe = make_sd()
    pos, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    neg, _ = pipe.encode_prompt("red", "cpu", 1, False)
    return pipe, pos, neg, negative_token_mask(pipe, "red")


def _run(pipe, pos, uncond, guidance):
    return pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=uncond,
        num_inference_steps=2,
        output_type="latent",
        guidance_scale=guidance,
        height=16,
        width=16,
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.mark.parametrize("guidance", [0.0, 5.0])
def test_apply_changes_remove_restores(sd, guidance):
    pipe, pos, neg, mask = sd
    uncond = pipe.encode_prompt("", "cpu", 1, False)[0] if guidance else None
    originals = {n: m.processor for n, m in pipe.unet.named_modules() if n.endswith("attn2")}
    stock = _run(pipe, pos, uncond, guidance)

    handle = apply_vsf(pipe, neg, scale=3.0, neg_mask=mask)
    try:
        assert len(handle.originals) == len(originals) == 4  # down, mid and two up cross-attentions
        assert all(
            isinstance(m.processor, VSFAttnProcessor) for n, m in pipe.unet.named_modules() if n.endswith("attn2")
        )
        changed = _run(pipe, pos, uncond, guidance)
    finally:
        remove_vsf(handle)

    assert not torch.allclose(changed, stock)
    assert torch.equal(_run(pipe, pos, uncond, guidance), stock)
    assert all(m.processor is originals[n] for n, m in pipe.unet.named_modules() if n.endswith("attn2"))


def test_cfg_rows(sd):
    """With CFG only the second (conditional) half of the batch changes; without, every row."""
    pipe, pos, neg, mask = sd
    attn = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2"))
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 16, attn.to_q.in_features, generator=g)
    context = torch.cat([pos, pos, pos, pos])
    with torch.no_grad():
        stock = attn(hidden, encoder_hidden_states=context)
        cfg = VSFAttnProcessor(neg, 3.0, mask, cfg=True)(attn, hidden, context)
        every = VSFAttnProcessor(neg, 3.0, mask, cfg=False)(attn, hidden, context)
    torch.testing.assert_close(cfg[:2], stock[:2], rtol=0, atol=1e-6)
    assert not torch.allclose(cfg[2:], stock[2:])
    torch.testing.assert_close(every[2:], cfg[2:])
    assert not torch.allclose(every[:2], stock[:2])


def test_negative_token_mask(sd):
    pipe = sd[0]
    mask = negative_token_mask(pipe, ["red", "blue sky"])
    assert mask.shape == (2, pipe.tokenizer.model_max_length)
    assert mask.sum(1).tolist() == [len("red") + 2, len("bluesky") + 2]  # BOS, characters, EOS
