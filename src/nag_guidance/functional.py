"""The NAG operator as pure tensor functions.

Per token, with Z+ the attention output for the prompt and Z- the one for the NAG negative
(both after head merge, before the output projection):

    Z~ = s·Z+ − (s−1)·Z-                       (s = scale; the paper writes φ = s − 1)
    r  = ‖Z~‖₁ / max(‖Z+‖₁, ε)                 (L1 over the last dim, fp32)
    Ẑ  = Z~ · min(r, τ) / r = Z~ · τ / max(r, τ)
    out = α·Ẑ + (1−α)·Z+

Writing the clip as ``τ / max(r, τ)`` keeps it finite for zero-norm tokens (r = 0 gives a factor of
1, never 0/0) and needs no data-dependent masks, so the function runs under
``torch.compile(fullgraph=True)``. τ = ∞ (never clip) is a factor of 1, not ∞/∞.

Broadcasting: ``z_neg`` must broadcast to ``z_pos``'s shape (e.g. one negative of batch 1 against a
batch of prompts); the result always has ``z_pos``'s shape and dtype.
"""

from __future__ import annotations

import math

import torch

DEFAULT_EPS = 1e-6
"""Floor on ‖Z+‖₁ so that zero-norm tokens give finite ratios (the authors' SDXL code gives NaN there)."""
_FP16_MAX = torch.finfo(torch.float16).max


def _check(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> None:
    if torch.broadcast_shapes(z_pos.shape, z_neg.shape) != z_pos.shape:
        raise ValueError(
            f"z_neg of shape {tuple(z_neg.shape)} does not broadcast to z_pos of shape {tuple(z_pos.shape)}"
        )
    if not scale >= 1.0:
        raise ValueError(f"scale={scale} is invalid: NAG needs scale >= 1 (1 = off)")
    if not tau > 0.0:
        raise ValueError(f"tau={tau} is invalid: tau must be > 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is invalid: alpha must be in [0, 1]")


def guidance_ratio(z_pos: torch.Tensor, z_tilde: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """r = ‖Z~‖₁ / max(‖Z+‖₁, ε) per token, in fp32, with a trailing dim of 1 for broadcasting."""
    norm_pos = torch.linalg.vector_norm(z_pos, ord=1, dim=-1, keepdim=True, dtype=torch.float32)
    norm_tilde = torch.linalg.vector_norm(z_tilde, ord=1, dim=-1, keepdim=True, dtype=torch.float32)
    return norm_tilde / norm_pos.clamp_min(eps)


def _clip_factor(ratio: torch.Tensor, tau: float) -> torch.Tensor:
    """min(r, τ)/r as τ / max(r, τ): finite for r = 0, and exactly 1 for τ = ∞."""
    return torch.ones_like(ratio) if math.isinf(tau) else tau / ratio.clamp_min(tau)


def normalized_attention_guidance(
    z_pos: torch.Tensor,
    z_neg: torch.Tensor,
    scale: float,
    tau: float,
    alpha: float,
    *,
    eps: float = DEFAULT_EPS,
    return_ratio: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Guide the positive attention output ``z_pos`` away from ``z_neg``.

    The whole formula runs in fp32 and is cast back to ``z_pos.dtype``, so fp16/bf16 inputs lose
    nothing to the extrapolation; a result beyond fp16's range (±65504: τ = ∞ with a huge scale) saturates
    there instead of becoming inf. With ``return_ratio=True`` the per-token ratio r (fp32, shape
    ``z_pos.shape[:-1] + (1,)``) is returned as well, for reporting; it is left on the device so
    callers can aggregate without a host sync. ``scale == 1`` returns ``z_pos`` itself.
    """
    _check(z_pos, z_neg, scale, tau, alpha)
    if scale == 1.0:
        return (z_pos, torch.ones_like(z_pos[..., :1], dtype=torch.float32)) if return_ratio else z_pos
    pos = z_pos.float()
    tilde = scale * pos - (scale - 1.0) * z_neg.float()
    ratio = guidance_ratio(pos, tilde, eps)
    clip = _clip_factor(ratio, tau)
    out = (alpha * clip * tilde + (1.0 - alpha) * pos).to(z_pos.dtype)
    if z_pos.dtype == torch.float16:  # fp16 ends at 65504 (bf16 spans fp32): saturate, not inf
        out.clamp_(-_FP16_MAX, _FP16_MAX)
    return (out, ratio) if return_ratio else out


def normalized_attention_guidance_(
    z_pos: torch.Tensor,
    z_neg: torch.Tensor,
    scale: float,
    tau: float,
    alpha: float,
    *,
    eps: float = DEFAULT_EPS,
    return_ratio: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """In-place variant: overwrites ``z_pos`` with the guided output and returns it.

    Peak extra memory is one ``z_neg``-sized temporary in the input dtype plus per-token fp32
    scalars, instead of several fp32 copies. It uses Z+ = (Z~ + (s−1)·Z-)/s so that Z+ need not be
    kept: out = (α·c + (1−α)/s)·Z~ + (1−α)(s−1)/s·Z-, with c the clip factor. That arithmetic happens in
    the input dtype, so it is used for fp32/fp64 only: lower precisions, whose range s·Z+ may exceed,
    are guided in fp32 out of place and copied back.
    """
    _check(z_pos, z_neg, scale, tau, alpha)
    if scale == 1.0:
        return (z_pos, torch.ones_like(z_pos[..., :1], dtype=torch.float32)) if return_ratio else z_pos
    if z_pos.dtype not in (torch.float32, torch.float64):
        guided, ratio = normalized_attention_guidance(z_pos, z_neg, scale, tau, alpha, eps=eps, return_ratio=True)
        z_pos.copy_(guided)
        return (z_pos, ratio) if return_ratio else z_pos
    norm_pos = torch.linalg.vector_norm(z_pos, ord=1, dim=-1, keepdim=True, dtype=torch.float32)
    z_pos.mul_(scale).sub_(z_neg, alpha=scale - 1.0)  # z_pos now holds Z~
    norm_tilde = torch.linalg.vector_norm(z_pos, ord=1, dim=-1, keepdim=True, dtype=torch.float32)
    ratio = norm_tilde / norm_pos.clamp_min(eps)
    clip = _clip_factor(ratio, tau)
    coef_tilde = alpha * clip + (1.0 - alpha) / scale
    z_pos.mul_(coef_tilde.to(z_pos.dtype))
    z_pos.add_(z_neg, alpha=(1.0 - alpha) * (scale - 1.0) / scale)
    return (z_pos, ratio) if return_ratio else z_pos
