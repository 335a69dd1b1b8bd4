"""How the negative rides along with the prompt into the denoiser, for every mechanism.

A forward pre-hook on each denoiser plans the forward (which rows are guided, see ``NAGState.plan_forward``)
and appends the negative's embeddings to the prompt's text input on the *sequence* axis — and its padding mask
to the text mask. Whatever the model then does to text tokens one by one (caption projections and norms,
modulation, the text stream of joint-attention blocks) happens to the negative's tokens too, with no per-model
code. Families whose models derive text positions from the text input extend them in ``extend_inputs``.
The attention wrappers take the negative back out of the sequence. A submodule that must not see the two texts
together runs on each alone (``NegativeAlone``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nag_guidance.integration.hooks import (
    ProcessorWrapper,
    add_denoiser_hooks,
    bind_forward,
    track_cache_context,
    unbind,
    unwrap_processors,
    unwrapped_during,
    wrap_processors,
)
from nag_guidance.integration.registry import Family, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState, NegativeText

ExtendInputs = Callable[[dict[str, Any], ForwardPlan, NegativeText], None]
"""Family hook: given the bound denoiser arguments (text already extended), extend whatever else depends on the
text length (position ids, rotary tables...) in place."""


@dataclass(frozen=True)
class NegativeRows:
    """How a family runs the negative branch on batch rows of its own, under the negative's pooled vector
    (``pooled="negative"``), instead of appending the negative's tokens to the prompt rows.

    ``inputs`` re-lays the bound denoiser arguments in place (texts as rows [prompt; negative], the pooled vector
    and timestep per row) and fills the plan; ``hooks`` installs, on one denoiser, the module hooks that keep the
    image stream right under rows of two kinds, and returns their undo.
    """

    inputs: Callable[[dict[str, Any], ForwardPlan, NegativeText], None]
    hooks: Callable[[torch.nn.Module, NAGState], Undo]


def install(pipe: Any, family: Family, state: NAGState, wrapper: type[ProcessorWrapper]) -> list[Undo]:
    """Hook every denoiser of ``pipe`` named by the family and wrap its attention processors with ``wrapper``
    (and register how to re-wrap them, for processors diffusers replaces later)."""
    undo: list[Undo] = []
    try:
        for attr in family.denoisers:
            model = getattr(pipe, attr, None)
            if model is None:
                continue
            layers = wrap_processors(model, family.attention, wrapper, state, attr)
            undo.append(functools.partial(unwrap_processors, model, state))
            state.rewrappers.append(functools.partial(wrap_processors, model, family.attention, wrapper, state, attr))
            if not layers:
                raise ValueError(
                    f"{type(model).__name__} (pipe.{attr}) has no attention layers named "
                    f"{' or '.join(family.attention)}: NAG cannot be installed on it"
                )
            make_hook = family.denoiser_hook or _append_negative
            undo.append(add_denoiser_hooks(model, make_hook(pipe, family, state), state))
            if family.negative_rows is not None:
                undo.append(family.negative_rows.hooks(model, state))
            undo.append(track_cache_context(model, state))
            undo.append(unwrapped_during(model, "set_default_attn_processor", state))
    except Exception:
        for action in reversed(undo):
            action()
        state.rewrappers.clear()
        raise
    return undo


def _append_negative(pipe: Any, family: Family, state: NAGState):
    """The denoiser pre-hook: plan the forward and append the negative to the text input (and its mask)."""
    extend = family.extend_inputs

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = state.call
        if call is None:
            return None
        bound = bind_forward(module, args, kwargs)
        arguments = bound.arguments
        text = arguments.get(family.text_arg)
        if not isinstance(text, torch.Tensor):
            call.note(f"the denoiser got no {family.text_arg} tensor: that forward was left unguided")
            return None
        plan = state.plan_forward(text.shape[0], text, arguments.get(family.timestep_arg))
        refuse_shared_attention_cache(module, state)
        if plan is None:
            return None
        negative = state.negative_rows(plan.rows.stop - plan.rows.start, device=text.device, dtype=text.dtype)
        if call.config.pooled == "negative":
            family.negative_rows.inputs(arguments, plan, negative)
            return unbind(bound)
        repeat = plan.batch // negative.embeds.shape[0]
        arguments[family.text_arg] = torch.cat([text, negative.embeds.repeat(repeat, 1, 1)], dim=1)
        plan.text_length, plan.negative_length = text.shape[1], negative.embeds.shape[1]
        mask = arguments.get(family.mask_arg) if family.mask_arg else None
        if family.mask_arg and (mask is not None or negative.mask is not None):
            arguments[family.mask_arg] = joined_mask(
                mask, negative.mask, text.shape[:2], negative.embeds.shape[:2], repeat
            )
        elif negative.mask is not None and extend is None:
            raise ValueError(f"the {family.name} denoiser takes no text mask, but the NAG negative has one")
        if extend is not None:
            extend(arguments, plan, negative)
        return unbind(bound)

    return pre_forward


def refuse_shared_attention_cache(denoiser: torch.nn.Module, state: NAGState) -> None:
    """Raise, before the forward, when diffusers' PyramidAttentionBroadcast caches attention on a denoiser whose
    call runs CFG's branches as forwards of their own (true CFG, Wan ...) and NAG guides one of them: PAB keeps one
    attention cache for both branches, so an unconditional forward would reuse NAG-guided attention (on
    joint-attention families, of another length: a shape error) and a guided one the unconditional branch's."""
    call = state.call
    if not (call.separate_uncond and call.guided_timesteps):
        return
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    config = getattr(getattr(denoiser, "_orig_mod", denoiser), "_cache_config", None)
    if isinstance(config, PyramidAttentionBroadcastConfig):
        raise ValueError(
            "NAG cannot run with PyramidAttentionBroadcast when CFG's branches are separate denoiser forwards (true "
            "CFG): PAB keeps one attention cache for both, so the unconditional branch would reuse NAG-guided "
            "attention and the guided branch the unconditional one's; call disable_cache() on the denoiser, turn "
            "CFG off, or use another cache (FirstBlockCache, MagCache, TaylorSeer keep one state per branch)"
        )


def joined_mask(
    mask: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
    text_shape: tuple[int, int],
    negative_shape: tuple[int, int],
    repeat: int,
) -> torch.Tensor:
    """[prompt mask, negative mask (rows repeated ``repeat`` times)] on the sequence axis; a missing side means
    all of its tokens count."""
    like = mask if mask is not None else negative_mask
    if mask is None:
        mask = torch.ones(text_shape, dtype=like.dtype, device=like.device)
    if negative_mask is None:
        negative_mask = torch.ones(negative_shape, dtype=like.dtype, device=like.device)
    return torch.cat([mask, negative_mask.to(mask.device, mask.dtype).repeat(repeat, 1)], dim=1)


Strip = Callable[[ForwardPlan, dict[str, Any]], Any]
"""Family part of ``NegativeAlone``: take the negative's part out of the bound arguments (in place), return it."""
Rerun = Callable[[torch.nn.Module, ForwardPlan, dict[str, Any], Any, Any], Any]
"""Family part of ``NegativeAlone``: (module, plan, bound arguments, what ``Strip`` returned, the module's output on
the prompt alone) -> that output with the module's output on the negative alone spliced in."""


def text_tail(argument: str) -> Strip:
    """The usual ``strip``: cut the negative's tokens (which follow the prompt's) off the text ``argument``."""

    def strip(plan: ForwardPlan, arguments: dict[str, Any]) -> torch.Tensor:
        text = arguments[argument]
        arguments[argument] = text[:, : plan.text_length]
        return text[:, plan.text_length :]

    return strip


class NegativeAlone:
    """Runs a submodule on the prompt's text only, and on the negative's alone, and splices the two outputs.

    For submodules that must not see the prompt's and the negative's tokens together (CogVideoX's patch embedding
    with its fixed-length table, HunyuanVideo's token refiner): a pre-hook lets ``strip`` set the negative aside,
    a forward hook lets ``rerun`` run the module on it, during which these hooks stand aside.
    """

    def __init__(self, module: torch.nn.Module, state: NAGState, strip: Strip, rerun: Rerun) -> None:
        self.state, self.strip, self.rerun = state, strip, rerun
        self.busy = False  # inside ``rerun``'s own call of the module
        self.aside: Any = None  # what ``strip`` returned, until the forward hook takes it
        handles = [
            module.register_forward_pre_hook(self._before, with_kwargs=True),
            module.register_forward_hook(self._after, with_kwargs=True),
        ]
        self.undo: list[Undo] = [handle.remove for handle in handles]

    def _before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self.busy:
            return None
        self.aside, plan = None, self.state.forward  # nothing kept from a forward that failed
        if plan is None:
            return None
        bound = bind_forward(module, args, kwargs)
        self.aside = self.strip(plan, bound.arguments)
        return unbind(bound)

    def _after(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        plan, aside = self.state.forward, self.aside
        if self.busy or plan is None or aside is None:
            return None
        self.aside = None
        self.busy = True
        try:
            return self.rerun(module, plan, bind_forward(module, args, kwargs).arguments, aside, output)
        finally:
            self.busy = False
