"""NAG for families whose text and image attend jointly (SD3, Flux, Chroma, Qwen-Image, HunyuanVideo, Flux2,
Z-Image): the negative text is its own stream through every block.

``negative_text`` appends the negative's tokens to the prompt's text, so every block's per-token text work
(projections, modulation, MLPs, the single-stream blocks) carries a third segment along: the joint sequence
inside attention is [prompt text | negative text | image] in the family's order. The image stream is not
duplicated: with the prompt's timestep embedding its tokens would be identical in both branches.

Each joint-attention processor runs as stock, projections, norms and RoPE included; only its call to the
attention function is intercepted and replaced by ``guided_joint_attention``:

- prompt-text queries attend to [prompt text; image], negative-text queries to [negative text; image];
- image queries attend to both key sets, giving Z+ and Z-. Attention over a union of key sets is the
  log-sum-exp-weighted merge of attention over each set, so the image×image part — the expensive one — is
  computed once and shared; only the short image×text parts are computed per branch;
- on the conditional rows the image outputs become NAG(Z+, Z-), before the processor's output projection.

The negative's text tokens are modulated with the prompt rows' embedding (timestep + the prompt's pooled
vector), as in the NAG authors' diffusers pipelines.
"""

from __future__ import annotations

import contextvars
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nag_guidance.integration import negative_text
from nag_guidance.integration.attention import attention_with_lse, merge_attention
from nag_guidance.integration.hooks import ProcessorWrapper
from nag_guidance.integration.registry import Family, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState


def install(pipe: Any, family: Family, state: NAGState) -> list[Undo]:
    """Wrap every joint-attention processor of the family's denoisers; returns the undo actions."""
    return negative_text.install(pipe, family, state, _wrapper_for(family))


@dataclass(frozen=True)
class JointLayout:
    """Where a family's processors call attention and how the joint sequence is laid out there.

    ``function``: "dispatch" (diffusers' ``dispatch_attention_fn`` in the processor's module, tensors
    (B, S, H, D)) or "sdpa" (``torch.nn.functional.scaled_dot_product_attention``, tensors (B, H, S, D)).
    ``text_first``: whether text precedes image in the joint sequence.
    """

    function: str = "dispatch"
    text_first: bool = True


def _wrapper_for(family: Family) -> type[ProcessorWrapper]:
    layout: JointLayout = family.extra.get("layout", JointLayout())

    class Wrapper(JointAttentionNAG):
        joint_layout = layout

    Wrapper.__name__ = f"JointAttentionNAG_{family.name}"
    return Wrapper


class JointAttentionNAG(ProcessorWrapper):
    """Runs the wrapped joint processor as stock, with its attention call replaced by the guided one."""

    joint_layout: JointLayout = JointLayout()

    def run(self, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plan = self.state.forward
        if plan is None:
            return self.processor(attn, *args, **kwargs)
        interception = _interception(self.processor, self.joint_layout.function)
        guided = _GuidedCall(self.state, self.layer, plan, self.joint_layout)
        with interception.active(guided):
            out = self.processor(attn, *args, **kwargs)
        if not guided.done:
            self.state.call.note(f"{self.layer}: the processor made no attention call NAG could guide")
        return out


class _GuidedCall:
    """Handles the first attention call of one processor call (later ones, if any, run as stock)."""

    def __init__(self, state: NAGState, layer: str, plan: ForwardPlan, layout: JointLayout) -> None:
        self.state, self.layer, self.plan, self.layout = state, layer, plan, layout
        self.done = False

    def __call__(self, original: Callable, query, key, value, attn_mask=None, *args: Any, **kwargs: Any):
        if self.done:
            return original(query, key, value, attn_mask, *args, **kwargs)
        self.done = True
        bhsd = self.layout.function == "sdpa"
        q, k, v = (t if bhsd else t.transpose(1, 2) for t in (query, key, value))
        scale = kwargs.get("scale")

        def stock(q_, k_, v_, mask_):
            out = original(*(t if bhsd else t.transpose(1, 2) for t in (q_, k_, v_)), mask_, *args, **kwargs)
            return out if bhsd else out.transpose(1, 2)

        out = guided_joint_attention(q, k, v, attn_mask, self.plan, self.layout.text_first, scale, stock, self._guide)
        return out if bhsd else out.transpose(1, 2)

    def _guide(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
        """NAG over merged heads: (B, H, N, D) → (B, N, H·D) and back."""
        b, h, n, d = z_pos.shape
        merged = self.state.guide(
            self.layer, z_pos.transpose(1, 2).reshape(b, n, h * d), z_neg.transpose(1, 2).reshape(b, n, h * d)
        )
        return merged.reshape(b, n, h, d).transpose(1, 2)


def guided_joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    plan: ForwardPlan,
    text_first: bool,
    scale: float | None,
    stock: Callable,
    guide: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Joint attention over [prompt text | negative text | image] (B, H, S, D) with NAG on the image queries of
    the conditional rows; see the module docstring. ``stock(q, k, v, mask)`` is the processor's own attention
    function, used where no log-sum-exp is needed."""
    total = q.shape[2]
    n_pos, n_neg = plan.text_length, plan.negative_length
    n_img = total - n_pos - n_neg
    start = 0 if text_first else n_img
    pos = slice(start, start + n_pos)
    neg = slice(start + n_pos, start + n_pos + n_neg)
    img = slice(start + n_pos + n_neg, total) if text_first else slice(0, n_img)
    rows = plan.rows
    text_masks = plan.extras.get("text_key_masks")
    if text_masks is not None:  # the family knows the text padding better than the model's joint mask
        image_keys = torch.ones(q.shape[0], n_img, dtype=torch.bool, device=q.device)
        parts = [text_masks[0].bool(), text_masks[1].bool()]
        parts = [*parts, image_keys] if text_first else [image_keys, *parts]
        mask = torch.cat(parts, dim=1)[:, None, None, :]

    def keys(text: slice, r: slice = slice(None)):
        return torch.cat([k[r, :, text], k[r, :, img]], 2), torch.cat([v[r, :, text], v[r, :, img]], 2)

    def sub_mask(q_part: slice, k_parts: tuple[slice, ...], r: slice = slice(None)):
        if mask is None:
            return None
        m = mask if mask.shape[0] == 1 else mask[r]
        m = m if m.shape[-2] == 1 else m[..., q_part, :]
        return torch.cat([m[..., part] for part in k_parts], -1)

    out = torch.empty_like(q)
    # prompt text: the stock computation restricted to its own key set
    k_pos, v_pos = keys(pos)
    out[:, :, pos] = stock(q[:, :, pos], k_pos, v_pos, sub_mask(pos, (pos, img)))
    # image: shared image×image part, merged with each branch's image×text part
    q_img = q[:, :, img]
    shared = attention_with_lse(q_img, k[:, :, img], v[:, :, img], sub_mask(img, (img,)), scale)
    z_pos = merge_attention(shared, attention_with_lse(q_img, k[:, :, pos], v[:, :, pos], sub_mask(img, (pos,)), scale))
    shared_rows = (shared[0][rows], shared[1][rows])
    z_neg = merge_attention(
        shared_rows,
        attention_with_lse(q_img[rows], k[rows, :, neg], v[rows, :, neg], sub_mask(img, (neg,), rows), scale),
    )
    out[:, :, img] = z_pos
    out[rows, :, img] = guide(z_pos[rows], z_neg)
    # negative text (conditional rows only; the other rows' negative segment is never read)
    k_neg, v_neg = keys(neg, rows)
    out[:, :, neg] = 0
    out[rows, :, neg] = stock(q[rows, :, neg], k_neg, v_neg, sub_mask(neg, (neg, img), rows))
    return out


class _Interception:
    """Temporarily routes one attention function through a handler, for the current thread only.

    The function is a module attribute (diffusers' ``dispatch_attention_fn`` in a model module, or torch's
    ``scaled_dot_product_attention``); it is swapped for a shim while at least one guided processor call is
    running, and the shim hands the call to the handler set in this thread's context, or to the original.
    """

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name = owner, name
        self.original: Callable | None = None
        self.users = 0
        self.lock = threading.Lock()
        self.handler: contextvars.ContextVar = contextvars.ContextVar(f"nag_{name}", default=None)

    def shim(self, *args: Any, **kwargs: Any) -> Any:
        handler = self.handler.get()
        if handler is None:
            return self.original(*args, **kwargs)
        return handler(self.original, *args, **kwargs)

    def active(self, handler: Callable):
        interception = self

        class _Active:
            def __enter__(self) -> None:
                self.token = interception.handler.set(handler)
                with interception.lock:
                    if interception.users == 0:
                        interception.original = getattr(interception.owner, interception.name)
                        setattr(interception.owner, interception.name, interception.shim)
                    interception.users += 1

            def __exit__(self, *exc: Any) -> None:
                with interception.lock:
                    interception.users -= 1
                    if interception.users == 0:
                        setattr(interception.owner, interception.name, interception.original)
                interception.handler.reset(self.token)

        return _Active()


_INTERCEPTIONS: dict[tuple[int, str], _Interception] = {}


def _interception(processor: Any, function: str) -> _Interception:
    if function == "sdpa":
        owner, name = torch.nn.functional, "scaled_dot_product_attention"
    else:
        owner, name = importlib.import_module(type(processor).__module__), "dispatch_attention_fn"
        if not hasattr(owner, name):
            raise RuntimeError(f"{type(processor).__name__} does not call diffusers' dispatch_attention_fn")
    key = (id(owner), name)
    if key not in _INTERCEPTIONS:
        _INTERCEPTIONS[key] = _Interception(owner, name)
    return _INTERCEPTIONS[key]
