"""NAG for families whose text and image attend jointly (SD3, Flux, Chroma, Qwen-Image, HunyuanVideo, Flux2,
Z-Image): the negative text is its own stream through every block.

``denoiser_hooks`` appends the negative's tokens to the prompt's text, so every block's per-token text work
(projections, modulation, MLPs, the single-stream blocks) carries a third segment along: the joint sequence
inside attention is [prompt text | negative text | image] in the family's order. The image stream is not
duplicated: with the prompt's timestep embedding its tokens would be identical in both branches.

Each joint-attention processor runs as stock, projections, norms and RoPE included; only its call to the
attention function is intercepted and replaced by ``guided_joint_attention``:

- prompt-text queries attend to [prompt text; image], negative-text queries to [negative text; image];
- image queries attend to both key sets, giving Z+ and Z-. Attention over a union of key sets is the
  log-sum-exp-weighted merge of attention over each set, so the image×image part — the expensive one — is
  computed once and shared; only the short image×text parts are computed per branch (the parts run on the
  processor's configured diffusers backend where it can return the log-sum-exp, see ``BackendAttention``);
- on the conditional rows the image outputs become NAG(Z+, Z-), before the processor's output projection.

The negative's text tokens are modulated with the prompt rows' embedding (timestep + the prompt's pooled
vector), as in the NAG authors' SD3 pipeline (``pooled="prompt"``). With ``pooled="negative"`` (the authors'
Flux and Kontext pipelines, ComfyUI-NAG; see ``NegativeRows``) the negative's text runs on rows of its own,
batch..2·batch, under its own modulation: a dual-stream processor gets image rows [B] and text rows [2B], folds
the text rows into the sequence ([prompt text | negative text | image] per row) and runs the guided call above;
a single-stream processor gets rows [prompt; negative], each [its text | its own image copy], attends per row
on the configured backend, and writes NAG(Z+, Z-) into the image tokens of both halves, as the authors do.
"""

from __future__ import annotations

import contextvars
import importlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from nag_guidance.integration import context_parallel
from nag_guidance.integration.attention import BackendAttention, guided_joint_attention
from nag_guidance.integration.family import Family, JointLayout
from nag_guidance.integration.processors import ProcessorWrapper
from nag_guidance.integration.state import ForwardPlan, NAGState


def wrapper_class(family: Family) -> type[ProcessorWrapper]:
    """The processor wrapper of the joint-attention mechanism, for the family's attention layout."""
    layout = family.layout

    class Wrapper(JointAttentionNAG):
        joint_layout = layout

    Wrapper.__name__ = f"JointAttentionNAG_{family.name}"
    return Wrapper


class JointAttentionNAG(ProcessorWrapper):
    """Runs the wrapped joint processor as stock, with its attention call replaced by the guided one."""

    joint_layout: JointLayout = JointLayout()

    def run(self, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plan = self.state.forward
        if plan is None or _attention_scores_skipped():
            return self.processor(attn, *args, **kwargs)
        if plan.negative_rows:
            return self._run_negative_rows(plan, attn, *args, **kwargs)
        guided = _GuidedCall(self.state, self.index, plan, self.joint_layout)
        return self._run_guided(guided, attn, *args, **kwargs)

    def _run_guided(self, guided: _GuidedCall | _RowsGuidedCall, attn: torch.nn.Module, *args: Any, **kwargs: Any):
        interception = _interception(self.processor, self.joint_layout.function)
        with interception.active(guided):
            out = self.processor(attn, *args, **kwargs)
        if not guided.done:
            # it attended over [prompt | negative | image] as one: that output is wrong, never return it
            raise RuntimeError(
                f"{self.layer}: {type(self.processor).__name__} did not call {interception.name}, where NAG "
                "intercepts its attention, so its output mixes prompt and negative; this diffusers version or "
                "processor is not supported"
            )
        return out

    def _run_negative_rows(self, plan: ForwardPlan, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``pooled="negative"``: see the module docstring (text first, rotary tables (cos, sin) by sequence)."""
        bound = self.signature.bind(attn, *args, **kwargs)
        arguments = bound.arguments
        text = arguments.get("encoder_hidden_states")
        if text is None:  # single-stream: rows [prompt; negative], each with its own image copy
            return self._run_guided(_RowsGuidedCall(self.state, self.index, plan), *bound.args, **bound.kwargs)
        batch, length = plan.batch, plan.text_length
        arguments["encoder_hidden_states"] = torch.cat([text[:batch], text[batch:]], dim=1)
        rotary = arguments.get("image_rotary_emb")
        if rotary is not None:  # both texts have the prompt's text positions
            arguments["image_rotary_emb"] = tuple(torch.cat([r[:length], r[:length], r[length:]]) for r in rotary)
        guided = _GuidedCall(self.state, self.index, plan, self.joint_layout)
        image, text_out = self._run_guided(guided, *bound.args, **bound.kwargs)
        return image, torch.cat([text_out[:, :length], text_out[:, length:]])


def _attention_scores_skipped() -> bool:
    """Whether diffusers' layer-skip hook (PAG / SEG style) replaces attention by its values here: then every
    token's output is its own value whatever the keys, so the stock processor gives the right result even with
    the negative's tokens in the sequence."""
    from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode

    stack = torch.overrides._get_current_function_mode_stack()
    return any(isinstance(mode, AttentionScoreSkipFunctionMode) for mode in stack)


class _GuidedCall:
    """Handles the first attention call of one processor call (later ones, if any, run as stock)."""

    def __init__(self, state: NAGState, layer: int, plan: ForwardPlan, layout: JointLayout) -> None:
        self.state, self.layer, self.plan, self.layout = state, layer, plan, layout
        self.done = False

    def __call__(self, original: Callable, query, key, value, attn_mask=None, *args: Any, **kwargs: Any):
        if self.done:
            return original(query, key, value, attn_mask, *args, **kwargs)
        self.done = True
        attention = BackendAttention(_configured_backend(kwargs))
        bhsd = self.layout.function == "sdpa"
        ulysses = context_parallel.ulysses_of(kwargs.get("parallel_config"))
        if ulysses is not None:  # (B, S/P, H, D) shards; the family follows Ulysses (see context_parallel_refusal)
            out = context_parallel.guided_ulysses_attention(
                query,
                key,
                value,
                self.plan,
                self.layout.text_first,
                kwargs.get("scale"),
                self._guide,
                attention,
                ulysses,
            )
        else:
            q, k, v = (t if bhsd else t.transpose(1, 2) for t in (query, key, value))
            out = guided_joint_attention(
                q, k, v, attn_mask, self.plan, self.layout.text_first, kwargs.get("scale"), self._guide, attention
            )
        if attention.fallback is not None:
            _say_backend_not_used(self.plan, attention.backend, attention.fallback)
        return out.transpose(1, 2) if bhsd else out

    def _guide(self, z_pos: torch.Tensor, z_neg: torch.Tensor) -> None:
        self.state.guide_(self.layer, z_pos, z_neg)


class _RowsGuidedCall:
    """A single-stream block under ``pooled="negative"``: rows [prompt; negative] of [text | image] each attend
    over their own sequence (the stock call, padded text keys masked out); then the image tokens of both halves
    become NAG(prompt half, negative half)."""

    def __init__(self, state: NAGState, layer: int, plan: ForwardPlan) -> None:
        self.state, self.layer, self.plan = state, layer, plan
        self.done = False

    def __call__(self, original: Callable, query, key, value, attn_mask=None, *args: Any, **kwargs: Any):
        if self.done:
            return original(query, key, value, attn_mask, *args, **kwargs)
        self.done = True
        batch, length = self.plan.batch, self.plan.text_length
        masks = self.plan.text_key_masks
        if masks is not None:
            image_keys = torch.ones(2 * batch, query.shape[1] - length, dtype=torch.bool, device=query.device)
            text_keys = torch.cat([masks[0], masks[1]]).bool()
            attn_mask = torch.cat([text_keys, image_keys], dim=1)[:, None, None, :]
        out = original(query, key, value, attn_mask, *args, **kwargs).contiguous()  # (2B, S, H, D)
        image = out[:, length:]
        self.state.guide_(self.layer, image[:batch].flatten(2), image[batch:].flatten(2))
        image[batch:] = image[:batch]
        return out


def _configured_backend(kwargs: dict) -> str | None:
    """The diffusers attention backend the processor asks for (its own, else the active one), None for PyTorch's
    default SDPA ("native")."""
    backend = kwargs.get("backend")
    if backend is None:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        backend = _AttentionBackendRegistry._active_backend
    name = getattr(backend, "value", backend)
    return None if name in (None, "native") else str(name)


_WARNED_BACKENDS: set[str] = set()


@torch.compiler.disable
def _say_backend_not_used(plan: ForwardPlan, backend: str, why: str) -> None:
    """Never silently: a one-time warning per backend, and a note in every affected call's report."""
    text = (
        f"attention backend {backend!r} {why}: NAG's guided joint attention ran on PyTorch's fused kernels instead "
        "(it needs each partial attention's log-sum-exp); unguided layers and steps use the configured backend"
    )
    plan.call.note(text)
    if backend not in _WARNED_BACKENDS:
        _WARNED_BACKENDS.add(backend)
        warnings.warn(text, stacklevel=2)


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

    def active(self, handler: Callable) -> _Active:
        return _Active(self, handler)


class _Active:
    """The context in which ``interception`` hands this thread's calls to ``handler``."""

    def __init__(self, interception: _Interception, handler: Callable) -> None:
        self.interception, self.handler = interception, handler

    def __enter__(self) -> None:
        interception = self.interception
        self.token = interception.handler.set(self.handler)
        with interception.lock:
            if interception.users == 0:
                interception.original = getattr(interception.owner, interception.name)
                setattr(interception.owner, interception.name, interception.shim)
            interception.users += 1

    def __exit__(self, *exc: Any) -> None:
        interception = self.interception
        with interception.lock:
            interception.users -= 1
            if interception.users == 0:
                setattr(interception.owner, interception.name, interception.original)
        interception.handler.reset(self.token)


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
