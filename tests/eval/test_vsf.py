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


# -- joint attention ------------------------------------------------------------------------------------------------


def _joint_expected(q, k, v, n_pos, n_neg, cond, vsf_scale, bias):
    """One float64 softmax per query group, as the VSF authors' MMDiT layout defines it (text first)."""
    q, k, v = q.double(), k.double(), v.double()
    total = q.shape[2]
    pos, neg, img = range(0, n_pos), range(n_pos, n_pos + n_neg), range(n_pos + n_neg, total)
    out = torch.zeros(q.shape[0], total, q.shape[1], q.shape[3], dtype=torch.float64)

    def attend(row, queries, keys, flipped=()):
        keys = list(keys)
        scores = q[row][:, list(queries)] @ k[row][:, keys].transpose(-1, -2) / math.sqrt(q.shape[-1])
        values = v[row][:, keys].clone()
        for i, key in enumerate(keys):
            if key in flipped:
                scores[..., i] += bias
                values[:, i] *= -vsf_scale
        return (torch.softmax(scores, -1) @ values).transpose(0, 1)  # (queries, H, D)

    for row in range(q.shape[0]):
        out[row, list(pos)] = attend(row, pos, [*pos, *img])
        if row in cond:
            out[row, list(img)] = attend(row, img, [*pos, *img, *neg], flipped=set(neg))
            out[row, list(neg)] = attend(row, neg, [*neg, *img])
        else:
            out[row, list(img)] = attend(row, img, [*pos, *img])
    return out


def test_joint_vsf_is_one_softmax_with_the_negative_flipped():
    from types import SimpleNamespace

    from nag_guidance.eval.vsf import joint_value_sign_flip_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3 + 4 + 5, 8) for _ in range(3))
    plan = SimpleNamespace(text_length=3, negative_length=4, rows=slice(1, 2), text_key_masks=None)
    for vsf_scale, bias in ((1.0, -0.1), (3.5, 0.2)):
        out = joint_value_sign_flip_attention(q, k, v, None, plan, True, None, None, vsf_scale=vsf_scale, bias=bias)
        expected = _joint_expected(q, k, v, 3, 4, {1}, vsf_scale, bias)
        assert torch.allclose(out.double(), expected, atol=1e-5)


def test_joint_vsf_on_a_flux_pipeline_and_its_no_op():
    import nag_guidance as nag
    from nag_guidance.eval.vsf import joint_vsf
    from nag_guidance.integration import joint_attention
    from nag_guidance.testing.joint import flux_call_kwargs, make_flux

    def run(pipe, **extra):
        generator = torch.Generator().manual_seed(0)
        return pipe("a red car", generator=generator, **flux_call_kwargs(), **extra)[0]

    pipe = make_flux()
    stock = run(pipe)
    nag.apply(pipe)
    negative = {"nag_negative_prompt": "blurry dog", "nag_scale": 2.0, "nag_pooled": "prompt"}
    guided = run(pipe, **negative)
    original = joint_attention.guided_joint_attention
    with joint_vsf(1.0):
        flipped = run(pipe, **negative)
    with joint_vsf(1.0, bias=float("-inf")):  # the image never sees the negative: the stock result
        unseen = run(pipe, **negative)
    assert joint_attention.guided_joint_attention is original
    assert not torch.allclose(flipped, stock, atol=1e-4) and not torch.allclose(flipped, guided, atol=1e-4)
    assert torch.allclose(unseen, stock, atol=1e-5)
    assert torch.equal(run(pipe, **negative), guided)
