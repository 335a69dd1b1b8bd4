"""VSF (Value Sign Flip) negative guidance for diffusers cross-attention UNets (the Stable Diffusion family).

Formulation (Guo & Du, "VSF: Simple, Efficient, and Effective Negative Guidance in Few-Step Image Generation
Models By Value Sign Flip", arXiv 2508.10931, https://arxiv.org/html/2508.10931v1, ICLR 2026
https://openreview.net/forum?id=W2NINfoVtN; authors' code https://github.com/weathon/VSF, read for
reference: ``src/processor.py``, ``src/sd3_pipeline.py``, ``comfyui/custom_nodes/value_sign_flip/src/
value_sign_flip/processor.py`` and ``nodes.py``, ``README.md``)::

    O = softmax([ q K_pos^T * s ,  q K_neg^T * s + b ]) @ [ V_pos ; -alpha * V_neg ]

* The negative prompt's tokens are *appended* to the prompt's tokens in the keys/values of one softmax; their
  keys are unchanged, their values are multiplied by ``-alpha`` (``scale``). Because they share the softmax, a
  negative token subtracts only as much as the image query actually attends to it (token/region/step adaptive).
* ``b`` is an additive attention-logit bias on the negative tokens, a small negative number: SD3.5 code
  subtracts ``offset`` = 0.1 from the image->negative logits (README: ``scale=3.5, offset=0.1``); Wan README
  sets the mask to -0.2 ("this should be negative", ``scale=1.7``; the ComfyUI node used +0.1 with 1.8).
  Default here ``bias=-0.1``.
* Which tokens: the negative is encoded *without padding* (``padding=False``), so its BOS/content/EOS tokens
  are kept and the padding is dropped; ``negative_token_mask`` builds that mask for a padded CLIP encoding.
* Where: in MMDiT (SD3.5, Flux) the negative tokens are duplicated: one positive-valued copy that only the
  negative's own tokens see, and one flipped copy that only the image sees (masked with -inf elsewhere). In
  cross-attention models (Wan ``attn2``; here the UNet's ``attn2``) text tokens are not updated, so there is
  no duplicate: only the cross-attention changes, self-attention is untouched.
* The method is meant for CFG-free few-step models (``guidance_scale=0``). With CFG (batch ``[uncond, cond]``)
  this module applies VSF to the conditional rows only; without CFG to all rows.
* Default scales from the authors: SD3.5-large-turbo 3.5 (offset 0.1); Flux-Schnell 3.5-6 (README examples
  3.5, 4, 6; Flux-Dev 8 "doesn't seem to work"); Wan 2.1 1.7-1.8 (bias -0.2 / +0.1). The paper gives no value
  for SD1.5-type UNets; tune ``scale`` (``scale=0`` with ``bias=-inf`` or no kept negative token is a no-op).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nag_guidance.integration.attention import attention_with_lse, merge_attention

__all__ = [
    "VSFAttnProcessor",
    "VSFHandle",
    "apply_vsf",
    "joint_value_sign_flip_attention",
    "joint_vsf",
    "negative_token_mask",
    "remove_vsf",
    "value_sign_flip_attention",
]


def value_sign_flip_attention(
    query: torch.Tensor,
    key_pos: torch.Tensor,
    value_pos: torch.Tensor,
    key_neg: torch.Tensor,
    value_neg: torch.Tensor,
    scale: float,
    neg_mask: torch.Tensor | None = None,
    bias: float = -0.1,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention of ``query`` (B, H, N, D) over the prompt's tokens (B, H, Lp, D) plus the negative's
    tokens (B, H, Ln, D), the negative values flipped and scaled by ``-scale``, the negative logits shifted
    by ``bias``. ``neg_mask`` (Ln,) or (B, Ln), True = keep the token (e.g. drop the negative's padding).
    ``softmax_scale`` defaults to 1/sqrt(D). Returns (B, H, N, D)."""
    batch, _, _, dim = query.shape
    pos_len, neg_len = key_pos.shape[-2], key_neg.shape[-2]
    key = torch.cat([key_pos, key_neg], dim=-2)
    value = torch.cat([value_pos, value_neg * -scale], dim=-2)
    logit_bias = torch.zeros(batch, pos_len + neg_len, dtype=query.dtype, device=query.device)
    logit_bias[:, pos_len:] = bias
    if neg_mask is not None:
        keep = neg_mask.to(device=query.device, dtype=torch.bool).expand(batch, neg_len)
        logit_bias[:, pos_len:] = logit_bias[:, pos_len:].masked_fill(~keep, float("-inf"))
    scale_qk = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(dim)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=logit_bias[:, None, None, :], scale=scale_qk)


class VSFAttnProcessor:
    """Cross-attention processor: plain attention for the unconditional rows, VSF for the conditional rows.

    ``negative_embeds`` (1 or Bc rows, Ln, D), ``neg_mask`` (Ln,) or (rows, Ln). ``cfg``: True = the batch is
    ``[uncond, cond]`` (VSF on the second half), False = VSF on every row, None = ask ``pipe`` during its call.
    """

    def __init__(self, negative_embeds, scale, neg_mask=None, bias=-0.1, cfg=None, pipe=None):
        self.negative_embeds = negative_embeds
        self.neg_mask = neg_mask
        self.scale = scale
        self.bias = bias
        self.cfg = cfg
        self.pipe = pipe

    def _cfg_now(self) -> bool:
        if self.cfg is not None:
            return self.cfg
        pipe = self.pipe
        return pipe is not None and hasattr(pipe, "_guidance_scale") and bool(pipe.do_classifier_free_guidance)

    def _rows(self, tensor: torch.Tensor | None, count: int) -> torch.Tensor | None:
        """``tensor``'s rows matched to ``count`` conditional rows (1 broadcasts, k repeats per prompt)."""
        if tensor is None or tensor.ndim == 1 or tensor.shape[0] == count:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(count, *tensor.shape[1:])
        if count % tensor.shape[0] == 0:
            return tensor.repeat_interleave(count // tensor.shape[0], dim=0)
        raise ValueError(f"VSF negative has {tensor.shape[0]} rows, the conditional batch {count}")

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("VSFAttnProcessor is for cross-attention (attn2) only")
        if attention_mask is not None or attn.spatial_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("VSF: encoder attention masks, spatial norm and 4-D inputs are not supported")
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        negative = self.negative_embeds.to(device=encoder_hidden_states.device, dtype=encoder_hidden_states.dtype)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            negative = attn.norm_encoder_hidden_states(negative)

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, H*D) -> (B, H, L, D)
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        key, value = heads(attn.to_k(encoder_hidden_states)), heads(attn.to_v(encoder_hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        batch = hidden_states.shape[0]
        first = batch // 2 if self._cfg_now() else 0  # rows before ``first`` get plain attention
        count = batch - first
        negative = self._rows(negative, count)
        key_neg, value_neg = heads(attn.to_k(negative)), heads(attn.to_v(negative))
        if attn.norm_k is not None:
            key_neg = attn.norm_k(key_neg)
        neg_mask = self._rows(self.neg_mask, count)

        out_cond = value_sign_flip_attention(
            query[first:], key[first:], value[first:], key_neg, value_neg, self.scale, neg_mask, self.bias, attn.scale
        )
        if first:
            plain = F.scaled_dot_product_attention(query[:first], key[:first], value[:first], scale=attn.scale)
            out_cond = torch.cat([plain, out_cond])
        out = out_cond.transpose(1, 2).flatten(2).to(query.dtype)  # merge heads
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class VSFHandle:
    """What ``apply_vsf`` changed: the attention modules and their original processor objects."""

    originals: dict[str, tuple[torch.nn.Module, object]] = field(default_factory=dict)
    processors: list[VSFAttnProcessor] = field(default_factory=list)

    def remove(self) -> None:
        remove_vsf(self)

    def __enter__(self) -> VSFHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def negative_token_mask(pipe, negative_prompt: str | list[str], length: int | None = None) -> torch.Tensor:
    """(rows, L) bool: the negative's BOS, content and first EOS tokens of a padded CLIP encoding
    (``pipe.encode_prompt`` pads to ``tokenizer.model_max_length``), i.e. what ``padding=False`` would keep."""
    tokenizer = pipe.tokenizer
    length = length or tokenizer.model_max_length
    prompts = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return tokens.attention_mask.bool()


def apply_vsf(
    pipe,
    negative_prompt_embeds: torch.Tensor,
    scale: float,
    neg_mask: torch.Tensor | None = None,
    bias: float = -0.1,
    cfg: bool | None = None,
) -> VSFHandle:
    """Wrap the processors of ``pipe.unet``'s cross-attention (``attn2``) layers with VSF.

    ``negative_prompt_embeds`` (1 or B rows, L, D) from ``pipe.encode_prompt``; ``neg_mask`` marks the tokens
    to use (see ``negative_token_mask``; default all L). With CFG (batch ``[uncond, cond]``) only the cond rows
    get VSF; without CFG all rows. ``cfg=None`` reads ``pipe.do_classifier_free_guidance`` during the call.
    Undo with ``remove_vsf(handle)`` (or use the handle as a context manager)."""
    if negative_prompt_embeds.ndim != 3:
        raise ValueError(f"negative_prompt_embeds must be (rows, L, D), got {tuple(negative_prompt_embeds.shape)}")
    handle = VSFHandle()
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2") and hasattr(module, "processor"):
            processor = VSFAttnProcessor(negative_prompt_embeds, scale, neg_mask, bias, cfg, pipe)
            handle.originals[name] = (module, module.processor)
            handle.processors.append(processor)
            module.processor = processor
    if not handle.originals:
        raise ValueError("VSF: the UNet has no cross-attention (attn2) layers")
    return handle


def remove_vsf(handle: VSFHandle) -> None:
    """Put the original processor objects back (idempotent)."""
    for module, original in handle.originals.values():
        module.processor = original
    handle.originals.clear()
    handle.processors.clear()


# -- joint attention (Flux-type transformers) ----------------------------------------------------------------------


def joint_value_sign_flip_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    plan,
    text_first: bool,
    scale: float | None,
    guide_,
    attention: Callable[..., tuple[torch.Tensor, torch.Tensor]] = attention_with_lse,
    *,
    vsf_scale: float,
    bias: float = -0.1,
) -> torch.Tensor:
    """VSF in a joint-attention layer laid out as NAG lays it out ([prompt text | negative text | image] per row,
    see ``integration.joint_attention.guided_joint_attention``, whose signature this shares; ``guide_`` is unused).

    The authors' MMDiT form: the negative's tokens are a text stream of their own (their queries see [negative;
    image]); prompt-text queries see [prompt; image]; image queries of the conditional rows see [prompt; image;
    negative] in one softmax, the negative's logits shifted by ``bias`` and its values multiplied by −``vsf_scale``.
    Computed as NAG's joint path computes attention, by log-sum-exp merges of the parts."""
    from nag_guidance.integration.attention import joint_segments

    batch, heads, total, dim = q.shape
    parts = joint_segments(q, k, v, mask, plan, text_first, scale, attention)
    pos, neg, img, attend, rows = parts.pos, parts.neg, parts.img, parts.attend, plan.rows
    out = q.new_empty(batch, total, heads, dim)
    merge_attention(attend(pos, pos), attend(pos, img), into=out[:, pos].transpose(1, 2))
    shared, prompt = attend(img, img), attend(img, pos)
    merge_attention(shared, prompt, into=out[:, img].transpose(1, 2))
    positive = (out[rows, img].transpose(1, 2).float(), torch.logaddexp(shared[1][rows], prompt[1][rows]))
    flipped, lse = attend(img, neg, rows)
    merge_attention(positive, (-vsf_scale * flipped.float(), lse + bias), into=out[rows, img].transpose(1, 2))
    out[:, neg] = 0
    merge_attention(attend(neg, neg, rows), attend(neg, img, rows), into=out[rows, neg].transpose(1, 2))
    return out


@contextmanager
def joint_vsf(scale: float, bias: float = -0.1) -> Iterator[None]:
    """Inside the block, a NAG-applied joint-attention pipeline called *with* a NAG negative (``nag_scale`` > 1,
    ``nag_pooled="prompt"``) runs VSF instead of NAG: NAG's machinery carries the negative's text stream, and its
    guided attention call is swapped for ``joint_value_sign_flip_attention``. For evaluation only."""
    from nag_guidance.integration import joint_attention

    original = joint_attention.guided_joint_attention
    joint_attention.guided_joint_attention = functools.partial(
        joint_value_sign_flip_attention, vsf_scale=scale, bias=bias
    )
    try:
        yield
    finally:
        joint_attention.guided_joint_attention = original
