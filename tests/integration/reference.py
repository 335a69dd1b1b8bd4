"""A slow, independent NAG reference for the cross-attention families, for tests only.

It shares no code with the package's mechanism. Per denoiser forward it first runs a *shadow* forward with the
negative text in place of the prompt and records, per text-attention layer, the context (and mask) that layer
received — so the negative gets whatever processing the model applies to text, whatever the family. The real
forward then replaces every text-attention layer by explicit attention math: Z+ from the prompt context, Z-
from the recorded negative context, both with the same queries, the NAG formula in float64 on the
conditional rows, then the layer's own output projection.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def is_text_layer(name: str, pattern: str) -> bool:
    """Whether a module is a text-attention layer: ``pattern`` is its name's last component ("attn2") or, with a dot,
    an ``fnmatch`` pattern of the whole name (the 3D UNets' temporal ``attn2`` attend over frames, not text)."""
    return fnmatch.fnmatchcase(name, pattern) if "." in pattern else name.rsplit(".", 1)[-1] == pattern


def nag_float64(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    p, n = z_pos.double(), z_neg.double()
    tilde = scale * p - (scale - 1) * n
    ratio = tilde.abs().sum(-1, keepdim=True) / p.abs().sum(-1, keepdim=True).clamp_min(1e-6)
    clipped = torch.where(ratio > tau, tilde * (tau / ratio), tilde)
    return (alpha * clipped + (1 - alpha) * p).to(z_pos.dtype)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, T, d)


def attention_before_projection(attn, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None):
    """Z = the layer's attention output after head merge, before ``to_out``, written out by hand."""
    image_context = None
    if getattr(attn, "add_k_proj", None) is not None:  # Wan I2V: image tokens in front of 512 text tokens
        image_context, context = context[:, :-512], context[:, -512:]
    if getattr(attn, "norm_cross", None) is not None:
        context = attn.norm_encoder_hidden_states(context)
    q, k, v = attn.to_q(hidden), attn.to_k(context), attn.to_v(context)
    if getattr(attn, "norm_q", None) is not None:  # the "across heads" norms of Wan / LTX / LTX-2
        q, k = attn.norm_q(q), attn.norm_k(k)
    heads = attn.heads
    bias = None
    if mask is not None:
        bias = mask.reshape(mask.shape[0], 1, -1, mask.shape[-1]).to(q.dtype)  # (B, 1, 1|N, L)
    z = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=bias)
    z = z.transpose(1, 2).flatten(2)
    if image_context is not None:
        k_img = attn.norm_added_k(attn.add_k_proj(image_context))
        v_img = attn.add_v_proj(image_context)
        z_img = F.scaled_dot_product_attention(_heads(q, heads), _heads(k_img, heads), _heads(v_img, heads))
        z = z + z_img.transpose(1, 2).flatten(2)
    if getattr(attn, "to_gate_logits", None) is not None:  # LTX-2.3 gated attention
        gates = 2.0 * torch.sigmoid(attn.to_gate_logits(hidden))
        z = (z.unflatten(-1, (heads, -1)) * gates.unsqueeze(-1)).flatten(2)
    return z


def project(attn, z: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](z))
    if getattr(attn, "residual_connection", False):
        out = out + residual
    return out / getattr(attn, "rescale_output_factor", 1.0)


@dataclass
class ReferenceNAG:
    """Install with ``install(pipe)``; ``negative`` is (embeds, mask) exactly as the denoiser takes text."""

    denoisers: tuple[str, ...]
    attention: str  # see ``is_text_layer``
    text_arg: str
    mask_arg: str | None
    negative: tuple[torch.Tensor, torch.Tensor | None]
    scale: float
    tau: float
    alpha: float
    cond_rows: int
    rows_of: Callable[[int, int], slice] | None = None  # (batch, cond rows) -> the prompt's rows (default: the last)
    skip: str | None = None  # layers whose name contains this are not text attention (motion modules)

    def install(self, pipe) -> None:
        self.mode = None
        self.records: list = []
        self.guided_layers: set = set()
        for attr in self.denoisers:
            model = getattr(pipe, attr, None)
            if model is None:
                continue
            model.register_forward_pre_hook(self._shadow_forward, with_kwargs=True)
            model.register_forward_hook(self._forward_done)
            for name, module in model.named_modules():
                if is_text_layer(name, self.attention) and not (self.skip and self.skip in name):
                    module.forward = self._layer(module, f"{attr}.{name}")

    def _negative_batch(self, batch: int, like: torch.Tensor, mask_like):
        embeds, mask = self.negative
        per_cond = self.cond_rows // embeds.shape[0]
        embeds = embeds.to(like).repeat_interleave(per_cond, 0).repeat(batch // self.cond_rows, 1, 1)
        if mask is not None or mask_like is not None:
            if mask is None:
                mask = torch.ones(self.negative[0].shape[:2], dtype=mask_like.dtype)
            mask = mask.to(like.device).repeat_interleave(per_cond, 0).repeat(batch // self.cond_rows, 1)
        return embeds, mask

    def _shadow_forward(self, module, args, kwargs):
        if self.mode is not None:
            return None
        bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
        text = bound.arguments[self.text_arg]
        mask_like = bound.arguments.get(self.mask_arg) if self.mask_arg else None
        embeds, mask = self._negative_batch(text.shape[0], text, mask_like)
        shadow = dict(bound.arguments)
        shadow.pop("self")
        shadow[self.text_arg] = embeds
        if self.mask_arg and mask is not None:
            shadow[self.mask_arg] = mask
        self.mode, self.records = "record", []
        try:
            module(**shadow)
        finally:
            self.mode = "guide"
        batch = self.batch = text.shape[0]
        self.rows = self.rows_of(batch, self.cond_rows) if self.rows_of else slice(batch - self.cond_rows, batch)
        self.position = 0
        return None

    def _layer(self, attn, name: str):
        original = attn.forward

        def forward(hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
            if self.mode == "record":
                self.records.append((encoder_hidden_states, attention_mask))
                return original(hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
            if self.mode != "guide":
                return original(hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
            negative_context, negative_mask = self.records[self.position]
            self.position += 1
            z_pos = attention_before_projection(attn, hidden_states, encoder_hidden_states, attention_mask)
            frames = hidden_states.shape[0] // self.batch  # > 1 where the model folds frames into the batch
            rows = slice(self.rows.start * frames, self.rows.stop * frames)
            z_neg = attention_before_projection(
                attn,
                hidden_states[rows],
                negative_context[rows],
                None if negative_mask is None else negative_mask[rows],
            )
            z = z_pos.clone()
            z[rows] = nag_float64(z_pos[rows], z_neg, self.scale, self.tau, self.alpha)
            self.guided_layers.add(name)
            return project(attn, z, hidden_states)

        return forward

    def _forward_done(self, module, args, output) -> None:
        if self.mode == "guide":
            self.mode = None
