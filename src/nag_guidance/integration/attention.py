"""Attention that also returns its log-sum-exp, and the merge of attention over two key sets.

For one query, attention over keys A ∪ B is the average of attention over A and over B weighted by each set's
softmax mass: with lse = log Σ exp(scores), out = out_A·exp(lse_A − lse) + out_B·exp(lse_B − lse) where
lse = logaddexp(lse_A, lse_B), i.e. a lerp from out_A to out_B by sigmoid(lse_B − lse_A). NAG's
joint-attention path uses it to share the image×image attention between the prompt and negative branches.

Tensors are (B, H, S, D). ``attention_with_lse`` takes the log-sum-exp from PyTorch's fused kernels where they
provide it (CPU flash, CUDA memory-efficient attention). ``BackendAttention`` computes it on the diffusers
attention backend a processor is configured with (``set_attention_backend``): through diffusers'
``dispatch_attention_fn(..., return_lse=True)`` where that backend returns it (flash-attn, FA3, sage ...), else
with PyTorch's own kernel of that backend (``_native_math``, ``_native_flash``, ``_native_efficient``,
``_native_cudnn``, ``flex``: diffusers 0.42 refuses ``return_lse`` there, or breaks on it outside context
parallelism), and says when it could not. Every kernel's first use on a device/dtype is checked against the
plain computation, and a kernel that disagrees or fails is never used again in the process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nag_guidance.integration.state import ForwardPlan

_KERNEL_OK: dict[tuple[str, torch.dtype], bool] = {}
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(q·kᵀ·scale + mask)·v, logsumexp of the scores in fp32 of shape (B, H, Sq)).

    ``mask`` is additive (float) or boolean (True = attend), broadcastable to (B, H, Sq, Sk).
    """
    mask = _additive(mask, q)
    key = (q.device.type, q.dtype)
    if torch.compiler.is_compiling():  # no data-dependent check can be traced: trust a kernel not found bad
        result = _kernel(q, k, v, mask, scale) if _KERNEL_OK.get(key, True) else None
        return result if result is not None else _plain(q, k, v, mask, scale)
    if _KERNEL_OK.get(key, True):
        try:
            result = _kernel(q, k, v, mask, scale)
        except (RuntimeError, NotImplementedError):
            result = None
        if result is not None:
            if key not in _KERNEL_OK:
                _KERNEL_OK[key] = _agrees(result, q, k, v, mask, scale)
            if _KERNEL_OK[key]:
                return result
        else:
            _KERNEL_OK[key] = False
    return _plain(q, k, v, mask, scale)


class BackendAttention:
    """``attention_with_lse`` on one diffusers attention backend (None or "native": PyTorch's default kernels).

    ``fallback`` is set, to why, when some call could not get the log-sum-exp from the backend and ran on
    PyTorch's default kernels instead, so that the caller can say so."""

    def __init__(self, backend: str | None) -> None:
        self.backend = None if backend in (None, "native") else backend
        self.fallback: str | None = None

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backend is not None:
            result = _on_backend(self.backend, q, k, v, mask, scale)
            if isinstance(result, str):
                self.fallback = result
            else:
                return result
        return attention_with_lse(q, k, v, mask, scale)


def merge_attention(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], into: torch.Tensor
) -> torch.Tensor:
    """Attention over the union of two key sets, from each set's (output, lse), written into ``into``.

    out = out_a + w·(out_b − out_a) with w = exp(lse_b − logaddexp(lse_a, lse_b)) = sigmoid(lse_b − lse_a): one
    fused ``lerp``. Low-precision outputs are merged in fp32. The merge is copied in instead of written with
    ``out=`` when autograd records (a sampling loop of one's own outside ``torch.no_grad``: ``out=`` cannot be
    differentiated) and under ``torch.compile`` (which fuses the copy anyway, and cannot trace ``out=`` views).
    """
    (out_a, lse_a), (out_b, lse_b) = a, b
    weight = torch.sigmoid(lse_b - lse_a).unsqueeze(-1)
    if out_a.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return torch.lerp(out_a, out_b, weight, out=into)
    return into.copy_(torch.lerp(out_a.float(), out_b.float(), weight))


_REFUSED = (RuntimeError, ValueError, TypeError, AttributeError, NotImplementedError)
"""What a source raises where the backend refuses ``return_lse``, lacks a kernel here, or diffusers breaks on it."""
NOT_CHECKED = "was not used eagerly before torch.compile traced NAG's joint attention (its first use is checked)"
NO_LSE = "gives no log-sum-exp here (or one that disagrees with the plain computation)"


def _on_backend(backend: str, q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(out, lse) on ``backend``: diffusers' dispatch first, then PyTorch's kernel of that backend; where neither
    works, why (``NO_LSE``, or ``NOT_CHECKED`` when traced before any eager use)."""
    key = (backend, q.device.type, q.dtype, mask is not None)
    mask = _additive(mask, q)
    known = _BACKEND_SOURCE.get(key)
    if torch.compiler.is_compiling():  # nothing data-dependent can be traced: the source found good eagerly
        if known is None:
            return NOT_CHECKED if key not in _BACKEND_SOURCE else NO_LSE
        return known(q, k, v, mask, scale)
    if known is not None:
        try:
            return known(q, k, v, mask, scale)
        except torch.OutOfMemoryError:
            raise
        except _REFUSED:
            return NO_LSE  # this call only (a shape the kernel cannot take): the source stays good
    if key in _BACKEND_SOURCE:
        return NO_LSE
    candidates = [_dispatch_source(backend, q, k, v, mask, scale)]
    candidates += [_TORCH_KERNELS[backend]] if backend in _TORCH_KERNELS else []
    for source in candidates:
        if source is None:
            continue
        try:
            result = source(q, k, v, mask, scale)
        except torch.OutOfMemoryError:
            raise
        except _REFUSED:
            continue
        if _agrees(result, q, k, v, mask, scale):
            _BACKEND_SOURCE[key] = source
            return result
    _BACKEND_SOURCE[key] = None
    return NO_LSE


def _dispatch_source(backend: str, q, k, v, mask, scale) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """diffusers' dispatch on ``backend`` as a source, with the layout of its lse learnt once: backends give it as
    (B, H, S) (flash-attn 2), (B, S, H) (FA3, sage, the context-parallel ops) or with a trailing 1, so it is read
    on a query length that differs from the head count. None where the backend gives no lse."""
    heads, length = q.shape[1], q.shape[2]
    probe = length if length != heads else length - 1
    if probe < 1:
        probe = length  # one query, one head: both layouts are the same
    rows = slice(0, probe)
    probe_mask = None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., rows, :])
    try:
        _, lse = _dispatch(backend, q[:, :, rows], k, v, probe_mask, scale)
    except torch.OutOfMemoryError:
        raise
    except _REFUSED:
        return None
    batch = q.shape[0]
    if lse.numel() != batch * heads * probe:
        return None
    lse = lse.reshape(lse.shape[:3]) if lse.ndim == 4 else lse
    if lse.shape == (batch, heads, probe):
        heads_last = False
    elif lse.shape == (batch, probe, heads):
        heads_last = True
    else:
        return None

    def source(q, k, v, mask, scale):
        out, lse = _dispatch(backend, q, k, v, mask, scale)
        lse = lse.reshape(q.shape[0], *((q.shape[2], q.shape[1]) if heads_last else (q.shape[1], q.shape[2])))
        return out, (lse.transpose(1, 2) if heads_last else lse).float()

    return source


def _dispatch(backend: str, q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' ``dispatch_attention_fn(..., return_lse=True)``, whose tensors are (B, S, H, D); raises
    ``ValueError`` where the backend answered with something other than (out, lse) (dispatch drops the keywords a
    backend does not list, so one without ``return_lse`` returns the output alone)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    result = dispatch_attention_fn(
        *(t.transpose(1, 2) for t in (q, k, v)),
        attn_mask=mask,
        scale=scale,
        backend=backend,
        attention_kwargs={"return_lse": True},
    )
    if not (isinstance(result, tuple) and len(result) == 2 and result[0].shape == q.transpose(1, 2).shape):
        raise ValueError(f"attention backend {backend!r} returned no (output, lse) pair")
    return result[0].transpose(1, 2), result[1]


def _native_flash(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    if q.device.type == "cpu":
        return _kernel(q, k, v, mask, scale)
    if mask is not None:
        raise ValueError("flash attention takes no mask")
    out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    return out, lse.float()


def _native_efficient(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    if q.device.type != "cuda":
        raise NotImplementedError("memory-efficient attention runs on CUDA only")
    return _kernel(q, k, v, mask, scale)


def _native_cudnn(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, lse, *_ = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, bias, True, 0.0, False, False, scale=scale
    )
    return out, lse.reshape(q.shape[:3]).float()


def _native_math(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    return _plain(q, k, v, mask, scale)


def _flex(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    score_mod = None
    if mask is not None:
        bias = mask.expand(q.shape[0], 1, q.shape[2], k.shape[2])

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b, 0, q_idx, kv_idx]

    out, lse = flex_attention(q, k, v, score_mod=score_mod, scale=scale, return_lse=True)
    return out, lse.float()


_TORCH_KERNELS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "_native_math": _native_math,
    "_native_flash": _native_flash,
    "_native_efficient": _native_efficient,
    "_native_cudnn": _native_cudnn,
    "flex": _flex,
}
# (backend, device type, dtype, masked) -> the source that works there, None where none does; sources take
# (q, k, v, additive mask, scale)
_BACKEND_SOURCE: dict[tuple[str, str, torch.dtype, bool], Callable[..., tuple[torch.Tensor, torch.Tensor]] | None] = {}


def _additive(mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(q.dtype)
    return torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))


def _kernel(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor] | None:
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=scale
        )
        return out, lse.float()
    if q.device.type == "cuda":
        bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, scale=scale)
        return out, lse[..., : q.shape[2]].float()
    return None


def _plain(q, k, v, mask, scale, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference computation in fp32, in query chunks to bound the score matrix's memory."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    outs, lses = [], []
    kf, vf = k.float(), v.float()
    for start in range(0, q.shape[2], chunk):
        part = slice(start, start + chunk)
        scores = torch.matmul(q[:, :, part].float(), kf.transpose(-1, -2)) * scale
        if mask is not None:
            m = mask if mask.shape[-2] == 1 else mask[..., part, :]
            scores = scores + m.float()
        lse = torch.logsumexp(scores, dim=-1)
        finite = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # fully masked rows give zeros
        outs.append(torch.matmul(torch.exp(scores - finite.unsqueeze(-1)), vf).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, 2), torch.cat(lses, 2)


def _agrees(result, q, k, v, mask, scale) -> bool:
    """Check a kernel's first answer on a slice of the real inputs against the plain computation."""
    rows = slice(0, min(q.shape[2], 64))
    m = None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., rows, :])
    out, lse = _plain(q[:1, :, rows], k[:1], v[:1], None if m is None else m[:1], scale)
    tol = _CHECK_TOLERANCE.get(q.dtype, 1e-3)
    same_out = torch.allclose(result[0][:1, :, rows].float(), out.float(), atol=tol, rtol=tol)
    same_lse = torch.allclose(result[1][:1, :, rows], lse, atol=tol * 10, rtol=tol)
    return bool(same_out and same_lse)


@dataclass(frozen=True)
class JointSegments:
    """Where the prompt's text, the negative's text and the image sit in a joint sequence, and the attention of
    one segment's queries over another's keys (with its log-sum-exp, the text padding masked out)."""

    pos: slice
    neg: slice
    img: slice
    attend: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def joint_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    plan: ForwardPlan,
    text_first: bool,
    scale: float | None,
    attention: Callable[..., tuple[torch.Tensor, torch.Tensor]] = attention_with_lse,
) -> JointSegments:
    """The segments of [prompt text | negative text | image] (in the family's order) of (B, H, S, D) tensors;
    ``attention`` computes each part with its log-sum-exp (``attention_with_lse`` or a ``BackendAttention``)."""
    batch, _, total, _ = q.shape
    n_pos, n_neg = plan.text_length, plan.negative_length
    n_img = total - n_pos - n_neg
    start = 0 if text_first else n_img
    pos = slice(start, start + n_pos)
    neg = slice(start + n_pos, start + n_pos + n_neg)
    img = slice(start + n_pos + n_neg, total) if text_first else slice(0, n_img)
    text_masks = plan.text_key_masks
    if text_masks is not None:  # the family knows the text padding better than the model's joint mask
        image_keys = torch.ones(batch, n_img, dtype=torch.bool, device=q.device)
        parts = [text_masks[0].bool(), text_masks[1].bool()]
        parts = [*parts, image_keys] if text_first else [image_keys, *parts]
        mask = torch.cat(parts, dim=1)[:, None, None, :]

    def attend(queries: slice, keys: slice, r: slice = slice(None)):
        m = None
        if mask is not None:
            m = mask if mask.shape[0] == 1 else mask[r]
            m = m if m.shape[-2] == 1 else m[..., queries, :]
            m = m[..., keys]
        return attention(q[r, :, queries], k[r, :, keys], v[r, :, keys], m, scale)

    return JointSegments(pos, neg, img, attend)


def guided_joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    plan: ForwardPlan,
    text_first: bool,
    scale: float | None,
    guide_: Callable[[torch.Tensor, torch.Tensor], None],
    attention: Callable[..., tuple[torch.Tensor, torch.Tensor]] = attention_with_lse,
) -> torch.Tensor:
    """Joint attention over [prompt text | negative text | image] with NAG on the image queries of the
    conditional rows; see the module docstring.

    ``q``, ``k``, ``v`` are (B, H, S, D); the result is (B, S, H, D), i.e. heads already next to each other per
    token, so that ``guide_(z_pos, z_neg)`` gets (rows, N, H·D) views and guides Z+ in place. Every part is
    computed by ``attention`` and merged by log-sum-exp weight: no key/value concatenation, and the image×image
    part is computed once.
    """
    batch, heads, total, dim = q.shape
    parts = joint_segments(q, k, v, mask, plan, text_first, scale, attention)
    pos, neg, img, attend = parts.pos, parts.neg, parts.img, parts.attend
    rows = plan.rows
    out = q.new_empty(batch, total, heads, dim)
    # prompt text: attention over [prompt text; image]
    merge_attention(attend(pos, pos), attend(pos, img), into=out[:, pos].transpose(1, 2))
    # image: the image×image part once, merged with each branch's image×text part
    shared = attend(img, img)
    merge_attention(shared, attend(img, pos), into=out[:, img].transpose(1, 2))
    z_neg = q.new_empty(rows.stop - rows.start, img.stop - img.start, heads, dim)
    shared_rows = (shared[0][rows], shared[1][rows])
    merge_attention(shared_rows, attend(img, neg, rows), into=z_neg.transpose(1, 2))
    guide_(out[rows, img].flatten(2), z_neg.flatten(2))
    # negative text (conditional rows only; the other rows' negative segment is never read)
    out[:, neg] = 0
    merge_attention(attend(neg, neg, rows), attend(neg, img, rows), into=out[rows, neg].transpose(1, 2))
    return out
