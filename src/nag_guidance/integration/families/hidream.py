"""HiDream-I1: double-stream then single-stream blocks over [image; text], with a text that the model rebuilds for
every block: [T5 | last chosen Llama layer] carried from block to block, plus the projection of *that block's* Llama
layer, appended fresh and dropped after the block. Text position ids are all zero (no rotary effect on text), there
is no text mask, and the pooled CLIP vectors enter ``temb``.

Every part of the text is per branch, so the negative rides along on both text inputs: its T5 tokens after the
prompt's (the shared mechanism), and its hidden states of every Llama layer after the prompt's (``extend_inputs``).
The model then builds each block's text as [T5+ | T5− | Llama+ | Llama− | layer-k+ | layer-k−]; a hook around each
block regroups it as [prompt text | negative text] for the guided attention (text tokens have no positions, and
everything else in a block works token by token, MoE routing included), and puts the model's order back after it.

The negative must be given as text: ``nag_negative_prompt_embeds`` carries the T5 part only. Its Llama hidden states
are captured while the pipeline's ``encode_prompt`` encodes the negative (redirected to the negative even when the
call sets ``prompt_4``); a call that gives ``prompt_embeds_t5`` / ``prompt_embeds_llama3``, which ``encode_prompt``
would reuse for the negative as well, is refused. The pipeline batches CFG as [uncond, cond] in one call.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.integration.denoiser_hooks import bind_forward, unbind
from nag_guidance.integration.family import Family, JointLayout, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState, NegativeText

_LLAMA = "encoder_hidden_states_llama3"
_MISSING = object()


@dataclass
class _Call:
    """Per call (``call.family``): the text encoders' outputs for the NAG negative, captured while encoding it, and
    its Llama hidden states as the denoiser takes them, by (rows, batch, device, dtype)."""

    t5: torch.Tensor | None = None
    llama3: torch.Tensor | None = None
    llama3_rows: dict[tuple, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Order:
    """Per guided forward (``plan.family``): the block text's token order as [prompt text | negative text], and
    its inverse."""

    regrouped: torch.Tensor
    inverse: torch.Tensor


def pipeline_hooks(pipe: Any, state: NAGState) -> list[Undo]:
    """The Llama part of the negative comes from the pipeline's own encoder helpers."""
    return [
        _redirect(pipe, state, "_get_t5_prompt_embeds", "t5"),
        _redirect(pipe, state, "_get_llama3_prompt_embeds", "llama3"),
    ]


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    handles = []
    for block in model.double_stream_blocks:
        handles.append(block.register_forward_pre_hook(_regroup_text(state, "encoder_hidden_states"), with_kwargs=True))
        handles.append(block.register_forward_hook(_restore_double(state)))
    for block in model.single_stream_blocks:
        handles.append(block.register_forward_pre_hook(_regroup_text(state, "hidden_states"), with_kwargs=True))
        handles.append(block.register_forward_hook(_restore_single(state)))
    return [handle.remove for handle in handles]


def _redirect(pipe: Any, state: NAGState, name: str, part: str) -> Undo:
    """While ``encode_prompt`` encodes the NAG negative, run the pipeline's text-encoder helper ``name`` on the
    negative's text and keep its output in the ``part`` field of ``_Call`` (the Llama part, which the shared
    encoding does not return)."""
    saved = pipe.__dict__.get(name, _MISSING)
    original = getattr(pipe, name)
    signature = inspect.signature(original)

    def encode(*args: Any, **kwargs: Any) -> torch.Tensor:
        call = state.call
        if call is None or not call.encoding_negative:
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.arguments["prompt"] = list(call.negative_prompt)
        out = original(*bound.args, **bound.kwargs)
        if call.family is None:
            call.family = _Call()
        setattr(call.family, part, out)
        return out

    setattr(pipe, name, encode)

    def undo() -> None:
        if saved is _MISSING:
            pipe.__dict__.pop(name, None)
        else:
            setattr(pipe, name, saved)

    return undo


def extend_llama(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    """``extend_inputs``: append the negative's hidden states of every Llama layer to the prompt's, and note where
    each branch's tokens are in the text the blocks will see."""
    call = plan.call
    if call.negative_prompt is None:
        raise ValueError(
            "HiDream's text is T5 plus the hidden states of every Llama layer: give the NAG negative as text "
            "(nag_negative_prompt); nag_negative_prompt_embeds can only carry its T5 part"
        )
    kept: _Call | None = call.family
    if kept is None or kept.t5 is None or kept.llama3 is None:
        raise ValueError(
            "the NAG negative was not encoded: HiDream's encode_prompt reuses prompt_embeds_t5 / "
            "prompt_embeds_llama3 when they are given, for the NAG negative too; pass the prompt as text"
        )
    llama = arguments[_LLAMA]
    count = plan.rows.stop - plan.rows.start
    key = (count, plan.batch, llama.device, llama.dtype)
    if key not in kept.llama3_rows:
        raw = kept.llama3
        if count % raw.shape[1]:
            raise ValueError(f"the NAG negative has {raw.shape[1]} rows, which does not divide the {count} prompt rows")
        rows = raw.to(llama).repeat_interleave(count // raw.shape[1], dim=1)
        kept.llama3_rows[key] = rows.repeat(1, plan.batch // count, 1, 1)
    negative_llama = kept.llama3_rows[key]
    arguments[_LLAMA] = torch.cat([llama, negative_llama], dim=2)
    t5, t5_negative = plan.text_length, plan.negative_length
    words, words_negative = llama.shape[2], negative_llama.shape[2]
    # the model's text per block: [T5+ | T5− | Llama+ | Llama− | layer-k+ | layer-k−]
    spans = [t5, t5_negative, words, words_negative, words, words_negative]
    starts = torch.tensor([0, *spans[:-1]]).cumsum(0).tolist()
    ranges = [torch.arange(s, s + n, device=llama.device) for s, n in zip(starts, spans, strict=True)]
    order = torch.cat(ranges[0::2] + ranges[1::2])
    plan.family = _Order(order, torch.argsort(order))
    plan.text_length, plan.negative_length = t5 + 2 * words, t5_negative + 2 * words_negative


def _regroup_text(state: NAGState, argument: str):
    """Block pre-hook: the text part of ``argument`` (the whole tensor, or its end in single blocks) regrouped as
    [prompt text | negative text]."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan = state.forward
        if plan is None or plan.family is None:
            return None
        order = plan.family.regrouped
        bound = bind_forward(module, args, kwargs)
        tokens = bound.arguments[argument]
        start = tokens.shape[1] - order.shape[0]
        bound.arguments[argument] = torch.cat([tokens[:, :start], tokens[:, start:][:, order]], dim=1)
        return unbind(bound)

    return pre_forward


def _restore_double(state: NAGState):
    def post_forward(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        plan = state.forward
        if plan is None or plan.family is None:
            return None
        hidden, text = output
        return hidden, text[:, plan.family.inverse]

    return post_forward


def _restore_single(state: NAGState):
    def post_forward(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        plan = state.forward
        if plan is None or plan.family is None:
            return None
        inverse = plan.family.inverse
        start = output.shape[1] - inverse.shape[0]
        return torch.cat([output[:, :start], output[:, start:][:, inverse]], dim=1)

    return post_forward


HIDREAM = Family(
    name="hidream",
    denoiser_classes=("HiDreamImageTransformer2DModel",),
    pipelines=("HiDreamImagePipeline",),
    mechanism="joint",
    extend_inputs=extend_llama,
    module_hooks=module_hooks,
    pipeline_hooks=pipeline_hooks,
    preset="generic",
    encode_returns=("embeds", "uncond", "llama3", "uncond_llama3", "pooled", "uncond_pooled"),
    text_arg="encoder_hidden_states_t5",
    mask_arg=None,
    timestep_arg="timesteps",
    attention=("attn1",),
    layout=JointLayout("sdpa", text_first=False),
    pooled_arg="pooled_embeds",
)
