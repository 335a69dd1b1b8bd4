"""What NAG puts on the denoiser module itself, and how the negative rides along with the prompt into it.

``DenoiserHooks`` is installed once per denoiser (stored on the module) and shared by every pipeline, handle or
guider that uses it: the processor wrappers of the family's mechanism on its text-attention layers, a forward
pre-hook that plans each forward, the family's own module hooks, and a tracker of diffusers' ``cache_context``.
Each forward is guided only by the call its own thread armed (``NAGState.call``); the last user's ``release``
gives the denoiser back stock.

The shared pre-hook plans the forward (which rows are guided, see ``NAGState.plan_forward``) and appends the
negative's embeddings to the prompt's text input on the *sequence* axis — and its padding mask to the text mask.
Whatever the model then does to text tokens one by one (caption projections and norms, modulation, the text stream
of joint-attention blocks) happens to the negative's tokens too, with no per-model code. Families whose models
derive text positions from the text input extend them in ``extend_inputs``. The attention wrappers take the
negative back out of the sequence. A submodule that must not see the two texts together runs on each alone
(``NegativeAlone``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from nag_guidance.integration.family import Family, PreForward, Undo
from nag_guidance.integration.processors import (
    ProcessorWrapper,
    unwrap_processors,
    unwrapped_during,
    wrap_processors,
)
from nag_guidance.integration.state import ForwardPlan, NAGState

_MISSING = object()
HOOKS_ATTRIBUTE = "_nag_hooks"
"""Where a hooked denoiser keeps its ``DenoiserHooks`` (in the module's ``__dict__``)."""


class BoundCall:
    """A module call's arguments by name (``arguments``, to edit in place), handed back by ``unbind`` the way the
    caller passed them: positionally what came positionally, the rest by keyword (diffusers' decorators, such as
    ``@apply_lora_scale``, read their arguments from the keywords only)."""

    def __init__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.signature = inspect.signature(type(module).forward)
        self.arguments = self.signature.bind(module, *args, **kwargs).arguments
        self.positional = len(args)

    def unbind(self) -> tuple[tuple, dict]:
        """(args, kwargs) of the call, without the module itself."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for index, parameter in enumerate(list(self.signature.parameters.values())[1:]):
            if parameter.name not in self.arguments:
                continue
            value = self.arguments[parameter.name]
            if parameter.kind is parameter.VAR_POSITIONAL:
                args.extend(value)
            elif parameter.kind is parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif index < self.positional and parameter.kind is not parameter.KEYWORD_ONLY:
                args.append(value)
            else:
                kwargs[parameter.name] = value
        return tuple(args), kwargs


def bind_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> BoundCall:
    """Bind a module call's arguments to the names of its class's ``forward``."""
    return BoundCall(module, args, kwargs)


def unbind(bound: BoundCall) -> tuple[tuple, dict]:
    """(args, kwargs) of a bound forward call, as its caller passed them (see ``BoundCall``)."""
    return bound.unbind()


def add_denoiser_hooks(
    module: torch.nn.Module, pre: Callable[[torch.nn.Module, tuple, dict], Any], state: NAGState
) -> Undo:
    """A kwargs-aware forward pre-hook, plus a post-hook that always clears the forward plan (even on error); from
    one to the other the forward holds ``state.forward_lock``, so another thread's forward of the same denoiser
    never reads or replaces this one's plan.

    Both run eagerly under ``torch.compile``: the per-step planning (counting steps, reading timesteps, building
    the negative's rows) then never becomes part of a guard, so a compiled denoiser does not recompile per step.
    """
    held = threading.local()  # per thread: how many forwards of this module hold the lock

    @torch.compiler.disable
    def plan(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        state.forward_lock.acquire()
        held.count = getattr(held, "count", 0) + 1
        state.forward = None
        return pre(module, args, kwargs)

    @torch.compiler.disable
    def clear(_module: torch.nn.Module, _args: tuple, _output: Any) -> None:
        if getattr(held, "count", 0) == 0:  # an earlier pre-hook failed before ours ran
            return
        state.forward = None
        held.count -= 1
        state.forward_lock.release()

    handles = [
        module.register_forward_pre_hook(plan, with_kwargs=True),
        module.register_forward_hook(clear, always_call=True),
    ]

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo


def track_cache_context(model: torch.nn.Module, state: NAGState) -> Callable[[], None]:
    """Record the name the pipeline gives ``model.cache_context(name)`` ("cond", "uncond", ...).

    diffusers announces which branch a denoiser call computes through this context manager; wrapping the
    instance's method (rather than a HookRegistry hook, whose removal rewrites ``forward`` and would drop
    offload hooks added later) keeps the undo exact.
    """
    if not hasattr(model, "cache_context"):
        return lambda: None
    saved = model.__dict__.get("cache_context", _MISSING)
    original = model.cache_context

    @contextmanager
    def cache_context(name: str, *args: Any, **kwargs: Any) -> Iterator[None]:
        call = state.call
        previous = call.context if call is not None else None
        if call is not None:
            call.context = name
        try:
            with original(name, *args, **kwargs):
                yield
        finally:
            if call is not None:
                call.context = previous

    model.cache_context = cache_context

    def undo() -> None:
        if saved is _MISSING:
            del model.cache_context
        else:
            model.cache_context = saved

    return undo


class DenoiserHooks:
    """NAG's hooks on one denoiser module, installed once and shared by every user (see the module docstring).

    ``acquire`` installs them on first use (or joins the installed ones) for a user, ``release`` lets the user go
    and uninstalls with the last one; users are held weakly, so a pipeline dropped without ``nag.remove`` does not
    stay alive through the denoiser, and the next ``acquire`` or ``release`` on it finds it gone.
    """

    def __init__(self, model: torch.nn.Module, family: Family, wrapper: type[ProcessorWrapper], name: str) -> None:
        self.model, self.family, self.name = model, family, name
        self.state = NAGState(family.cfg_cond_first, family.timestep_units)
        self.users: weakref.WeakSet[Any] = weakref.WeakSet()
        self._undo: list[Undo] = []
        try:
            self._install(wrapper)
        except Exception:
            self._uninstall()
            raise

    @classmethod
    def acquire(
        cls, model: torch.nn.Module, family: Family, wrapper: type[ProcessorWrapper], name: str, user: Any
    ) -> DenoiserHooks:
        """The hooks of ``model`` (a compiled wrapper counts as the module inside), installed if need be, with
        ``user`` counted among their users."""
        model = getattr(model, "_orig_mod", model)
        hooks = model.__dict__.get(HOOKS_ATTRIBUTE)
        if hooks is not None and hooks.family.name != family.name:
            raise ValueError(
                f"{name} ({type(model).__name__}) already has NAG installed for the {hooks.family.name} family: "
                f"it cannot be guided as {family.name} at the same time; remove the other first"
            )
        if hooks is None:
            hooks = cls(model, family, wrapper, name)
            model.__dict__[HOOKS_ATTRIBUTE] = hooks
        hooks.users.add(user)
        return hooks

    def release(self, user: Any) -> None:
        """``user`` no longer uses these hooks; the last user's release gives the denoiser back stock."""
        self.users.discard(user)
        self.prune()

    def prune(self) -> None:
        """Uninstall when no user is left alive (a dropped pipeline's handle leaves the weak set by itself)."""
        if not any(True for _ in self.users):
            self._uninstall()

    def rewrap(self) -> None:
        """Wrap the processors diffusers replaced since the installation."""
        for rewrap in self.state.rewrappers:
            rewrap()

    def _install(self, wrapper: type[ProcessorWrapper]) -> None:
        family, model, state, undo = self.family, self.model, self.state, self._undo
        layers = wrap_processors(model, family.attention, wrapper, state, self.name)
        undo.append(functools.partial(unwrap_processors, model, state))
        state.rewrappers.append(functools.partial(wrap_processors, model, family.attention, wrapper, state, self.name))
        if not layers:
            raise ValueError(
                f"{type(model).__name__} ({self.name}) has no attention layers named "
                f"{' or '.join(family.attention)}: NAG cannot be installed on it"
            )
        make_pre_forward = family.pre_forward or append_negative
        undo.append(add_denoiser_hooks(model, make_pre_forward(family, state), state))
        if family.negative_rows is not None:
            undo.append(family.negative_rows.hooks(model, state))
        if family.module_hooks is not None:
            undo.extend(family.module_hooks(model, state))
        undo.append(track_cache_context(model, state))
        undo.append(unwrapped_during(model, "set_default_attn_processor", state))

    def _uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.state.rewrappers.clear()
        if self.model.__dict__.get(HOOKS_ATTRIBUTE) is self:
            del self.model.__dict__[HOOKS_ATTRIBUTE]


def append_negative(family: Family, state: NAGState) -> PreForward:
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
