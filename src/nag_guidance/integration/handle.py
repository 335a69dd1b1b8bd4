"""``NAGHandle``: NAG installed for one user of a set of denoisers, and the only code that arms it for a call.

All three doors go through it: the pipeline door (``nag.apply``) holds one per pipeline, ``nag.attach`` returns
one for a bare denoiser, the guider keeps one per denoiser it runs on::

    handle = nag.attach(pipe.transformer, family="flux")
    handle.begin(negative_embeds, config=nag.NAGConfig(scale=5, tau=2.5, alpha=0.25))
    for t in timesteps: ...  # call the transformer as usual
    report = handle.end()
    handle.remove()

The hooks themselves belong to each denoiser (``DenoiserHooks``, installed once, shared by every handle over it);
a handle arms them for the calling thread between ``begin`` and ``end``, so a forward from another thread, or
from another pipeline over the same denoiser, runs stock. Outside a call the hooks pass straight through.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch

from nag_guidance.config import NAGConfig
from nag_guidance.integration import cross_attention, joint_attention
from nag_guidance.integration.denoiser_hooks import DenoiserHooks
from nag_guidance.integration.families import family_named
from nag_guidance.integration.family import Family, Undo
from nag_guidance.integration.processors import ProcessorWrapper
from nag_guidance.integration.report import NAGReport, report_from_call
from nag_guidance.integration.state import CallInfo, NAGState, NegativeText, Schedule, schedule_of

_WRAPPERS: dict[str, Callable[[Family], type[ProcessorWrapper]]] = {
    "cross": cross_attention.wrapper_class,
    "joint": joint_attention.wrapper_class,
}
"""The processor wrapper of each mechanism (``Family.mechanism``)."""


class NAGHandle:
    """NAG on the denoisers ``owner`` holds (a pipeline, or a namespace around a bare denoiser) for one user."""

    def __init__(self, family: Family, owner: Any) -> None:
        self.family = family
        self.owner = owner
        self._hooks: dict[str, DenoiserHooks] = {}  # denoiser attribute -> its shared hooks
        self._installed_on: dict[str, int] = {}
        self._pipeline_undo: list[Undo] = []
        self._calls: list[tuple[int, CallInfo]] = []  # (thread, call) of the calls in force
        self._removed = False
        # a handle dropped without remove() lets its denoisers go back stock when it was their last user
        self._finalizer = weakref.finalize(self, _release_orphans, self._hooks)
        self.refresh()

    # -- installation --------------------------------------------------------------------------

    def _denoisers(self) -> dict[str, Any]:
        found = {}
        for attr in self.family.denoisers:
            model = getattr(self.owner, attr, None)
            if model is not None:
                found[attr] = model
        return found

    def refresh(self) -> None:
        """Follow what changed since the installation: a denoiser assigned anew (``pipe.unet = ...``) gets the hooks
        and the old one is released (a pipeline built without one, to encode prompts only, gets them once it has
        one), and processors diffusers replaced are wrapped again. Every call starts with it."""
        if self._removed:
            return
        current = self._denoisers()
        identities = {attr: id(getattr(model, "_orig_mod", model)) for attr, model in current.items()}
        if identities != self._installed_on:
            self._uninstall()
            try:
                wrapper = _WRAPPERS[self.family.mechanism](self.family)
                for attr, model in current.items():
                    self._hooks[attr] = DenoiserHooks.acquire(model, self.family, wrapper, attr, self)
                if self._hooks and self.family.pipeline_hooks is not None:
                    self._pipeline_undo = self.family.pipeline_hooks(self.owner, self.states[0])
            except Exception:
                self._uninstall()
                raise
            self._installed_on = identities
            return
        for hooks in self._hooks.values():
            hooks.rewrap()

    def _uninstall(self) -> None:
        while self._pipeline_undo:
            self._pipeline_undo.pop()()
        for hooks in self._hooks.values():
            hooks.release(self)
        self._hooks.clear()
        self._installed_on = {}

    @property
    def states(self) -> list[NAGState]:
        """The NAG state of each hooked denoiser."""
        return [hooks.state for hooks in self._hooks.values()]

    @property
    def models(self) -> list[torch.nn.Module]:
        """The hooked denoiser modules (compiled wrappers unwrapped)."""
        return [hooks.model for hooks in self._hooks.values()]

    # -- refusals ------------------------------------------------------------------------------

    def refuse_unsupported_setups(self, config: NAGConfig) -> None:
        """Raise ``ValueError`` before any compute where NAG cannot guide these denoisers: under diffusers' context
        parallelism where it does not follow it (``context_parallel_refusal``); with FasterCache, which on the
        steps where it skips the unconditional half of a batched-CFG forward drops those rows inside the
        denoiser's forward, after NAG chose which rows to guide; with PyramidAttentionBroadcast and a window that
        does not cover the whole schedule, where the broadcast would serve a step of one guided state the
        attention of a step of the other."""
        from diffusers.hooks import FasterCacheConfig, PyramidAttentionBroadcastConfig

        refusal = self.context_parallel_refusal(self.family.pooled_for(config))
        if refusal is not None:
            raise ValueError(f"{refusal}: NAG cannot guide it; disable parallelism, or call without a NAG negative")
        for attr, hooks in self._hooks.items():
            cache = getattr(hooks.model, "_cache_config", None)
            if isinstance(cache, FasterCacheConfig):
                raise ValueError(
                    f"NAG does not support FasterCache (enabled on {attr}): it drops the unconditional rows inside "
                    f"the denoiser after NAG chose the rows to guide; call {attr}.disable_cache() or use another "
                    "cache (FirstBlockCache, MagCache, TaylorSeer, PyramidAttentionBroadcast)"
                )
            if isinstance(cache, PyramidAttentionBroadcastConfig) and not config.full_window:
                raise ValueError(
                    f"NAG with a start/end window (start={config.start:g}, end={config.end:g}) cannot run with "
                    f"PyramidAttentionBroadcast (enabled on {attr}): the broadcast would reuse a guided step's "
                    "attention in an unguided one or the reverse; use the full window (start=0, end=1), call "
                    f"{attr}.disable_cache(), or use another cache (FirstBlockCache, MagCache, TaylorSeer)"
                )

    def context_parallel_refusal(self, pooled: str | None = None) -> str | None:
        """Why NAG cannot guide these denoisers under diffusers' context parallelism (``enable_parallelism`` with a
        ``ContextParallelConfig``), or None. Cross-attention NAG is per image token, so it is exact while the text
        stays whole on every rank (tested with Ulysses on Wan); it is not where the model's ``_cp_plan`` shards the
        text (LTX-Video). The joint-attention path follows Ulysses on the families that declare it
        (``Family.ulysses``, see ``context_parallel``: Flux, Flux Kontext, FLUX.2, tested); ring attention,
        ``pooled="negative"`` and the other joint families it does not follow."""
        family = self.family
        for attr, hooks in self._hooks.items():
            model = hooks.model
            config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
            if config is None:
                continue
            plan = getattr(model, "_cp_plan", None) or {}
            shards_text = any(isinstance(inputs, dict) and family.text_arg in inputs for inputs in plan.values())
            if family.mechanism == "cross":
                if not shards_text:
                    continue
                why = f"which shards the text ({family.text_arg}) NAG splits into prompt and negative"
            elif not family.ulysses:
                why = f"which NAG's joint attention does not follow on the {family.name} family"
            elif config.ring_degree > 1:
                why = "with ring attention, which NAG's joint attention does not follow (Ulysses only)"
            elif pooled == "negative":
                why = "which NAG's joint attention does not follow with pooled='negative'"
            else:
                continue
            return f"{attr} runs with context parallelism (enable_parallelism), {why}"
        return None

    # -- a call ----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a ``begin`` is in force (in any thread)."""
        return bool(self._calls)

    def begin(
        self,
        negative: torch.Tensor | NegativeText | Sequence[str],
        negative_mask: torch.Tensor | None = None,
        *,
        config: NAGConfig | None = None,
        prompt_rows: int | None = None,
        num_steps: int | None = None,
        count_steps: Callable[[], int | None] | None = None,
        scheduler: Any = None,
        schedule: Schedule | None = None,
    ) -> CallInfo:
        """Guide the calling thread's next denoiser forwards away from ``negative``: embeddings ((1 or n, L, D), as
        the denoiser takes its text), or the negative as text, which the pipeline's ``encode_prompt`` encodes
        during the call (the pipeline door). ``prompt_rows``: the number of conditional rows when a forward batches
        CFG as [uncond, cond] (default: every row is guided). A partial ``start``/``end`` window needs the
        diffusers ``scheduler`` whose timesteps the denoiser gets, or its ``schedule`` (``config.window=
        "schedule"``), or the number of steps (``num_steps`` or ``count_steps``, ``"steps"``).

        Everything is checked before anything is armed: a ``ValueError`` leaves the handle idle."""
        if self._removed:
            raise RuntimeError("this NAG handle was removed: attach again")
        if any(thread == threading.get_ident() for thread, _ in self._calls):
            raise RuntimeError("NAG is already active on this handle in this thread: call end() first")
        config = config or NAGConfig()
        config = config.with_overrides(pooled=self.family.pooled_for(config))
        if schedule is None and scheduler is not None:
            schedule = schedule_of(scheduler)
        if not config.full_window and config.window == "schedule" and schedule is None:
            raise ValueError("a partial schedule window (start/end) needs begin(..., scheduler=the_scheduler)")
        if not config.full_window and config.window == "steps" and not (num_steps or count_steps):
            raise ValueError("a partial step window (start/end, window='steps') needs begin(..., num_steps=n)")
        text = isinstance(negative, str) or (
            isinstance(negative, (list, tuple)) and any(isinstance(p, str) for p in negative)
        )
        if not text and not isinstance(negative, NegativeText):
            negative = NegativeText(negative, negative_mask)
        elif negative_mask is not None:
            raise ValueError("negative_mask goes with negative embeddings given as a tensor")
        self.refresh()
        if not self._hooks:
            raise ValueError(f"there is no denoiser to guide ({' or '.join(self.family.denoisers)} is None)")
        self.refuse_unsupported_setups(config)
        call = CallInfo(
            config=config, prompt_rows=prompt_rows, num_steps=num_steps, count_steps=count_steps, schedule=schedule
        )
        if text:
            call.negative_prompt = check_negative_prompt(negative)
        else:
            check_negative(negative, self.family, self.models[0], config)
            call.negative = negative
        for state in self.states:
            state.arm(call)
        self._calls.append((threading.get_ident(), call))
        return call

    def finish(self) -> CallInfo:
        """Stop guiding the calling thread's call and return its record, without a host sync (the guider merges
        several into one report)."""
        thread = threading.get_ident()
        for index in range(len(self._calls) - 1, -1, -1):
            if self._calls[index][0] == thread:
                _, call = self._calls.pop(index)
                for state in self.states:
                    state.disarm(call)
                return call
        raise RuntimeError("NAG is not active on this handle in this thread: call begin() first")

    def end(self) -> NAGReport:
        """Stop guiding and say what NAG did since ``begin``."""
        return report_from_call(self.family.name, self.finish())

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Inside the block this thread's forwards run stock (the pipeline door runs step callbacks so, which may
        call another pipeline over the same denoiser)."""
        for state in self.states:
            state.arm(None)
        try:
            yield
        finally:
            for state in self.states:
                state.disarm(None)

    def remove(self) -> None:
        """Uninstall this handle's use of the hooks; the last user's removal gives the denoisers back stock.
        Idempotent; refused with ``RuntimeError`` while a call is in force."""
        if self._calls:
            raise RuntimeError(
                "NAG cannot be removed while a call is running (from another thread, or from inside the call's own "
                "callback): remove it after the call returns"
            )
        self._uninstall()
        self._finalizer.detach()
        self._removed = True

    def __repr__(self) -> str:
        layers = [layer for state in self.states for layer in state.layers]
        shown = ", ".join(layers[:4]) + (f", … ({len(layers)} in all)" if len(layers) > 4 else "")
        status = "removed" if self._removed else "active" if self.active else "idle"
        return f"NAGHandle(family={self.family.name!r}, {status}, layers=[{shown}])"


def _release_orphans(hooks: dict[str, DenoiserHooks]) -> None:
    for installed in hooks.values():
        installed.prune()


def check_negative_prompt(prompt: Any) -> tuple[str, ...]:
    """A NAG negative as text: a string, or a non-empty list of strings (one per prompt)."""
    prompts = (prompt,) if isinstance(prompt, str) else None
    if prompts is None and isinstance(prompt, (list, tuple)):
        prompts = tuple(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"the NAG negative prompt must be a string or a non-empty list of strings, got {prompt!r}")
    return prompts


def check_negative(negative: NegativeText, family: Family, denoiser: Any, config: NAGConfig) -> None:
    """Every door's checks of negative embeddings, before any compute: a floating-point (rows, tokens, width)
    tensor with real values, at least one row and one token, as wide as the text the denoiser takes; a mask of
    shape (rows, tokens); a pooled vector of shape (rows, width) only where the call uses it."""
    embeds, mask, pooled = negative.embeds, negative.mask, negative.pooled
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
        raise ValueError(
            "the NAG negative's embeddings must be a tensor of shape (rows, tokens, channels), got "
            f"{getattr(embeds, 'shape', type(embeds).__name__)}"
        )
    if embeds.device.type == "meta":
        raise ValueError("the NAG negative's embeddings are on the meta device: they hold no values")
    if not embeds.is_floating_point():
        raise ValueError(f"the NAG negative's embeddings must be floating point, got {embeds.dtype}")
    if embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise ValueError(f"the NAG negative's embeddings have shape {tuple(embeds.shape)}: no rows or no tokens")
    if not bool(torch.isfinite(embeds).all()):
        raise ValueError("the NAG negative's embeddings contain NaN or infinite values")
    width = family.width_of(getattr(denoiser, "_orig_mod", denoiser))
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(
            f"the NAG negative's embeddings have {embeds.shape[-1]} channels, but {type(denoiser).__name__} takes "
            f"text embeddings of width {width} ({' / '.join(family.text_width)})"
        )
    if mask is not None and not family.takes_negative_mask(config.pooled):
        raise ValueError(
            f"the {family.name} denoiser takes no text mask (pooled={config.pooled!r}), so the NAG negative's "
            "attention mask would change nothing: leave it out"
        )
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2])):
        raise ValueError(
            f"the NAG negative's attention mask must have shape {tuple(embeds.shape[:2])}, "
            f"got {getattr(mask, 'shape', type(mask).__name__)}"
        )
    if pooled is None:
        if config.pooled == "negative":
            raise ValueError(
                "pooled='negative' needs the negative's pooled vector (nag_negative_pooled_prompt_embeds, or "
                "NegativeText(embeds, pooled=...)), or give the negative as text"
            )
        return
    if config.pooled != "negative":
        raise ValueError(
            "a pooled vector for the NAG negative is only used with pooled='negative' (the negative branch under "
            f"its own modulation); this call uses pooled={config.pooled!r}: leave it out, or set pooled='negative'"
        )
    if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2 or pooled.shape[0] != embeds.shape[0]:
        raise ValueError(
            f"the NAG negative's pooled vector must have shape ({embeds.shape[0]}, width), "
            f"got {getattr(pooled, 'shape', type(pooled).__name__)}"
        )
    if not pooled.is_floating_point() or not bool(torch.isfinite(pooled).all()):
        raise ValueError("the NAG negative's pooled vector must be floating point, with no NaN or infinite values")
    pooled_width = getattr(getattr(denoiser, "config", None), "pooled_projection_dim", None)
    if isinstance(pooled_width, int) and pooled.shape[-1] != pooled_width:
        raise ValueError(
            f"the NAG negative's pooled vector has width {pooled.shape[-1]}, but {type(denoiser).__name__} takes "
            f"{pooled_width} (pooled_projection_dim)"
        )


def attach(denoiser: torch.nn.Module, family: str) -> NAGHandle:
    """Install NAG on a bare denoiser of the named family (see ``nag families``) and return its handle.

    Families whose text path runs through pipeline components besides the denoiser (LTX-2's connectors, HiDream's
    encoders) need the pipeline door, ``nag.apply``.
    """
    spec = family_named(family)
    if not spec.attachable:
        raise ValueError(f"the {family} family needs its pipeline: use nag.apply(pipe)")
    if not isinstance(denoiser, torch.nn.Module):
        raise TypeError(f"attach() takes the denoiser module, got {type(denoiser).__name__}")
    return NAGHandle(spec, SimpleNamespace(**{spec.denoisers[0]: denoiser}))
