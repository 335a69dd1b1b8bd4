"""The denoiser door: NAG hooks on a bare ``unet`` / ``transformer``, for sampling loops of one's own.

>>> handle = nag.attach(pipe.transformer, family="flux")
>>> handle.begin(negative_embeds, config=nag.NAGConfig(scale=5, tau=2.5, alpha=0.25))
>>> for t in timesteps: ...  # call the transformer as usual
>>> report = handle.end()
>>> handle.remove()

``attach`` installs the family's hooks (processor wrappers on the text-attention layers, a planning hook on the
denoiser) and returns a ``NAGHandle`` that owns their state. Between ``begin`` and ``end`` every forward of the
denoiser is guided with the given negative; outside, the hooks pass straight through and the denoiser computes
exactly what it computes without them. The pipeline door (``nag.apply``) is this handle plus a call wrapper that
encodes the negative and brackets each pipeline call with ``begin`` / ``end``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from nag_guidance.config import NAGConfig
from nag_guidance.integration.registry import Family, Undo, registered_families
from nag_guidance.integration.report import NAGReport, report_from_call
from nag_guidance.integration.state import NAGState, NegativeText, schedule_of


class NAGHandle:
    """NAG installed on one set of denoisers: the state their hooks share, and the undo of the installation."""

    def __init__(self, family: Family, owner: Any, count_steps: Callable[[], int | None] | None = None) -> None:
        self.family = family
        self.owner = owner  # the pipeline, or a namespace holding the bare denoiser
        self.state = NAGState(
            cond_first=family.cfg_cond_first, count_steps=count_steps, timestep_units=family.timestep_units
        )
        self._undo: list[Undo] = []
        self._installed_on: dict[str, int] = {}
        self._removed = False
        self.refresh()

    def _denoisers(self) -> dict[str, int]:
        """The identity of each denoiser the owner holds now (a compiled wrapper counts as the module inside)."""
        found = {}
        for attr in self.family.denoisers:
            model = getattr(self.owner, attr, None)
            if model is not None:
                found[attr] = id(getattr(model, "_orig_mod", model))
        return found

    def refresh(self) -> None:
        """Follow what changed since the installation: a denoiser assigned anew (``pipe.unet = ...``) gets the hooks
        (a pipeline built without one, to encode prompts only, gets them once it has one), and processors diffusers
        replaced are wrapped again. Every pipeline call starts with it."""
        if self._removed:
            return
        current = self._denoisers()
        if current != self._installed_on:
            self._uninstall()
            if current:
                self._undo = self.family.install(self.owner, self.family, self.state)
            self._installed_on = current
            return
        for rewrap in self.state.rewrappers:
            rewrap()

    def refuse_unsupported_setups(self, config: NAGConfig) -> None:
        """Raise ``ValueError`` before any compute where NAG cannot guide these denoisers: under diffusers' context
        parallelism where it does not follow it (``context_parallel_refusal``), or with FasterCache, which on the
        steps where it skips the unconditional half of a batched-CFG forward drops those rows inside the
        denoiser's forward, after NAG chose which rows to guide (NAG would guide the wrong rows, or fail on a shape
        mismatch)."""
        from diffusers.hooks import FasterCacheConfig

        refusal = self.context_parallel_refusal(self.family.pooled_for(config))
        if refusal is not None:
            raise ValueError(f"{refusal}: NAG cannot guide it; disable parallelism, or call without a NAG negative")
        for attr in self.family.denoisers:
            model = getattr(self.owner, attr, None)
            cache = getattr(getattr(model, "_orig_mod", model), "_cache_config", None)
            if isinstance(cache, FasterCacheConfig):
                raise ValueError(
                    f"NAG does not support FasterCache (enabled on {attr}): it drops the unconditional rows inside "
                    f"the denoiser after NAG chose the rows to guide; call {attr}.disable_cache() or use another "
                    "cache (FirstBlockCache, MagCache, TaylorSeer, PyramidAttentionBroadcast)"
                )

    def context_parallel_refusal(self, pooled: str | None = None) -> str | None:
        """Why NAG cannot guide these denoisers under diffusers' context parallelism (``enable_parallelism`` with a
        ``ContextParallelConfig``), or None. Cross-attention NAG is per image token, so it is exact while the text
        stays whole on every rank (tested with Ulysses on Wan); it is not where the model's ``_cp_plan`` shards the
        text (LTX-Video). The joint-attention path follows Ulysses on the families that declare it
        (``Family.ulysses``, see ``context_parallel``: Flux, Flux Kontext, FLUX.2, tested); ring attention,
        ``pooled="negative"`` and the other joint families it does not follow."""
        from nag_guidance.integration import cross_attention

        for attr in self.family.denoisers:
            model = getattr(self.owner, attr, None)
            model = getattr(model, "_orig_mod", model)
            config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
            if config is None:
                continue
            plan = getattr(model, "_cp_plan", None) or {}
            shards_text = any(isinstance(inputs, dict) and self.family.text_arg in inputs for inputs in plan.values())
            if self.family.install is cross_attention.install:
                if not shards_text:
                    continue
                why = f"which shards the text ({self.family.text_arg}) NAG splits into prompt and negative"
            elif not self.family.ulysses:
                why = f"which NAG's joint attention does not follow on the {self.family.name} family"
            elif config.ring_degree > 1:
                why = "with ring attention, which NAG's joint attention does not follow (Ulysses only)"
            elif pooled == "negative":
                why = "which NAG's joint attention does not follow with pooled='negative'"
            else:
                continue
            return f"{attr} runs with context parallelism (enable_parallelism), {why}"
        return None

    def _uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.state.rewrappers.clear()

    @property
    def active(self) -> bool:
        """Whether a ``begin`` is in force."""
        return self.state.call is not None

    def begin(
        self,
        negative_embeds: torch.Tensor | NegativeText,
        negative_mask: torch.Tensor | None = None,
        *,
        config: NAGConfig | None = None,
        prompt_rows: int | None = None,
        num_steps: int | None = None,
        scheduler: Any = None,
    ) -> None:
        """Guide the next denoiser forwards away from ``negative_embeds`` ((1 or n, L, D), as the denoiser takes
        its text). ``prompt_rows``: the number of conditional rows when a forward batches CFG as [uncond, cond]
        (default: every row is guided). A partial ``start``/``end`` window needs the diffusers ``scheduler``
        whose timesteps the denoiser gets (``config.window="schedule"``) or ``num_steps`` (``"steps"``)."""
        if self._removed:
            raise RuntimeError("this NAG handle was removed: attach again")
        if self.state.call is not None:
            raise RuntimeError("NAG is already active on this handle: call end() first")
        config = config or NAGConfig()
        config = config.with_overrides(pooled=self.family.pooled_for(config))
        if not config.full_window and config.window == "schedule" and scheduler is None:
            raise ValueError("a partial schedule window (start/end) needs begin(..., scheduler=the_scheduler)")
        if not config.full_window and config.window == "steps" and not num_steps:
            raise ValueError("a partial step window (start/end, window='steps') needs begin(..., num_steps=n)")
        self.refresh()
        self.refuse_unsupported_setups(config)
        negative = (
            negative_embeds
            if isinstance(negative_embeds, NegativeText)
            else NegativeText(negative_embeds, negative_mask)
        )
        if config.pooled == "negative" and negative.pooled is None:
            raise ValueError("pooled='negative' needs the negative's pooled vector: NegativeText(embeds, pooled=...)")
        schedule = None if scheduler is None else schedule_of(scheduler)
        self.state.begin_call(config, negative, prompt_rows, num_steps, schedule)

    def end(self) -> NAGReport:
        """Stop guiding and say what NAG did since ``begin``."""
        call = self.state.end_call()
        if call is None:
            raise RuntimeError("NAG is not active on this handle: call begin() first")
        return report_from_call(self.family.name, call)

    def remove(self) -> None:
        """Uninstall every hook and wrapper; the denoisers are their stock selves again. Idempotent."""
        self.state.end_call()
        self._uninstall()
        self._removed = True

    def __repr__(self) -> str:
        layers = self.state.layers
        shown = ", ".join(layers[:4]) + (f", … ({len(layers)} in all)" if len(layers) > 4 else "")
        status = "removed" if self._removed else "active" if self.active else "idle"
        return f"NAGHandle(family={self.family.name!r}, {status}, layers=[{shown}])"


def attach(denoiser: torch.nn.Module, family: str) -> NAGHandle:
    """Install NAG on a bare denoiser of the named family (see ``nag families``) and return its handle.

    Families whose text path runs through pipeline components besides the denoiser (LTX-2's connectors, HiDream's
    encoders) need the pipeline door, ``nag.apply``.
    """
    families = registered_families()
    if family not in families:
        raise ValueError(f"unknown family {family!r}; known families: {', '.join(families)}")
    spec = families[family]
    if not spec.attachable:
        raise ValueError(f"the {family} family needs its pipeline: use nag.apply(pipe)")
    if not isinstance(denoiser, torch.nn.Module):
        raise TypeError(f"attach() takes the denoiser module, got {type(denoiser).__name__}")
    return NAGHandle(spec, SimpleNamespace(**{spec.denoisers[0]: denoiser}))
