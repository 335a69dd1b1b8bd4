"""The NAG state of one hooked denoiser, shared by its denoiser hooks and attention wrappers.

One ``NAGState`` lives as long as NAG's hooks on a denoiser, which every pipeline (and handle) using that denoiser
shares. A call arms it for the calling thread only (``arm``) and always disarms it again (``disarm``, in a
``finally``): ``call`` is the calling thread's innermost armed call, so a forward from another thread, or from a
pipeline that armed nothing, runs exactly the stock computation: every hook is inert while ``call`` is None.

Per denoiser forward the denoiser hook calls ``plan_forward``: it decides whether this forward is guided and
which batch rows are the conditional ones, and leaves the answer in ``forward`` (None = run as stock) for the
attention wrappers to read. Forwards of one hooked denoiser from several threads take turns (``forward_lock``), so
``forward`` is always the running forward's own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.config import NAGConfig
from nag_guidance.functional import normalized_attention_guidance_

GUIDED_CONTEXTS = (None, "cond", "cond_uncond", "pred_cond")
"""diffusers ``cache_context`` names of denoiser calls that carry the prompt ("pred_cond": the conditional pass of
modular pipelines' guider loops). Any other name ("uncond", and extra passes such as LTX-2's "uncond_stg" /
"uncond_modality") is never guided."""


TIMESTEP_UNITS = ("scheduler", "fraction", "reversed_fraction")
"""How a family's pipeline hands the scheduler's timestep t to the denoiser: as it is, as t/1000 (Flux and its
peers) or as (1000 − t)/1000 (Z-Image, Lumina 2)."""


def scheduler_timestep(value: float, units: str) -> float:
    """The scheduler timestep behind the value a denoiser was given (see ``TIMESTEP_UNITS``)."""
    if units == "fraction":
        return value * 1000.0
    if units == "reversed_fraction":
        return (1.0 - value) * 1000.0
    return value


@dataclass(frozen=True)
class Schedule:
    """What the schedule window needs to know of the scheduler: its ``train_timesteps`` T and whether it is a
    flow-matching one (continuous t = T·σ ∈ [0, T]) or a discrete one (integer t ∈ [0, T − 1])."""

    train_timesteps: int = 1000
    flow: bool = True

    def guides(self, t: float, start: float, end: float) -> bool:
        """The NAG authors' window rule at scheduler timestep ``t``: their Flux pipeline guides while
        t ≥ (1 − end)·1000, their SDXL pipeline while t ≥ floor((1 − end)·999); ``start`` mirrors it from above."""
        top = self.train_timesteps if self.flow else self.train_timesteps - 1
        lowest = (1.0 - end) * top if self.flow else math.floor((1.0 - end) * top)
        return lowest <= t <= (1.0 - start) * top


def schedule_of(scheduler: Any) -> Schedule:
    """The ``Schedule`` of a diffusers scheduler: flow-matching schedulers by class name (FlowMatch*) or by the
    flow options of the multistep solvers (``use_flow_sigmas`` / ``prediction_type="flow_prediction"``)."""
    config = getattr(scheduler, "config", {}) or {}
    flow = (
        type(scheduler).__name__.startswith("FlowMatch")
        or bool(config.get("use_flow_sigmas"))
        or config.get("prediction_type") == "flow_prediction"
    )
    return Schedule(int(config.get("num_train_timesteps", 1000)), flow)


def window_guides(
    config: NAGConfig, t: float | None, step_index: int, num_steps: int | None, schedule: Schedule | None
) -> bool | None:
    """Whether the step at scheduler timestep ``t`` (step ``step_index`` of ``num_steps``) is inside the NAG window
    of ``config`` — the one window rule of every door; None where the window needs what is unknown (the schedule,
    or the number of steps)."""
    if config.full_window:
        return True
    if config.window == "schedule":
        return None if schedule is None or t is None else schedule.guides(t, config.start, config.end)
    if not num_steps:
        return None
    return config.start <= step_index / num_steps < config.end


@dataclass
class NegativeText:
    """The encoded NAG negative as the denoiser will see it.

    ``embeds``: (n, L, D) with n = 1 or the number of prompts; ``mask``: (n, L) with 1 = real token, or None;
    ``pooled``: (n, P), the negative's pooled text vector, where the family has one (for ``pooled="negative"``).
    """

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    pooled: torch.Tensor | None = None

    def rows(self, count: int, *, device: torch.device, dtype: torch.dtype) -> NegativeText:
        """The negative repeated to ``count`` rows, on ``device``/``dtype`` (masks keep their dtype).

        n = 1 broadcasts; n = number of prompts is repeated per image, matching diffusers' row order
        [p0, p0, p1, p1] for ``num_images_per_prompt = 2``.
        """
        n = self.embeds.shape[0]
        if count % n:
            raise ValueError(f"the NAG negative has {n} rows, which does not divide the {count} prompt rows")

        def expand(t: torch.Tensor | None, cast: bool) -> torch.Tensor | None:
            if t is None:
                return None
            t = t.to(device=device, dtype=dtype if cast and t.is_floating_point() else t.dtype)
            return t.repeat_interleave(count // n, dim=0) if count != n else t

        return NegativeText(expand(self.embeds, True), expand(self.mask, False), expand(self.pooled, True))


@dataclass
class ForwardPlan:
    """How the current denoiser forward is guided.

    ``rows``: the conditional batch rows; ``text_length`` / ``negative_length``: token counts of the prompt's and
    the negative's text as they entered the denoiser (the negative follows the prompt on the sequence axis).
    ``text_key_masks``: (prompt, negative) text masks for the guided joint attention, where the family knows the
    text padding better than the model's joint mask. ``negative_rows``: the negative branch runs on rows of its
    own, batch..2·batch of the text stream (``pooled="negative"``, see ``NegativeRows``), and ``text_length`` is
    then the common length both texts were padded to. ``family``: the family module's own per-forward values
    (its dataclass, set by its hooks). ``call``: the call that armed this forward; ``stats``: its statistics
    rows for this denoiser's layers (see ``NAGState.guide_``).
    """

    rows: slice
    batch: int
    call: CallInfo
    stats: torch.Tensor
    text_length: int = 0
    negative_length: int = 0
    text_key_masks: tuple[torch.Tensor, torch.Tensor] | None = None
    negative_rows: bool = False
    family: Any = None


@dataclass(eq=False)
class CallInfo:
    """What one NAG-enabled call knows; dropped at the end of the call."""

    config: NAGConfig
    negative: NegativeText | None = None
    num_steps: int | None = None
    count_steps: Callable[[], int | None] | None = None  # reads the number of denoising steps once they are set
    schedule: Schedule | None = None  # the scheduler's, for a partial schedule window
    step_index: int = -1
    last_timestep: float | None = None
    prompt_rows: int | None = None  # prompts × images per prompt, when the call's arguments say so
    branch_rows: Callable[[int, int], slice | None] | None = None  # (batch, prompt rows) -> guided rows, for
    # pipelines whose batch is not CFG's [uncond, cond] (PAG, InstructPix2Pix; see families.pipelines)
    cond_embeds: Any = None  # the prompt embeddings the pipeline encoded (captured from encode_prompt)
    uncond_embeds: Any = None  # the pipeline's own CFG negative embeddings (captured), if any
    context: str | None = None  # diffusers cache_context name of the current denoiser call
    separate_uncond: bool = False  # a forward ran CFG's unconditional branch on its own (true CFG, Wan ...)
    negative_prompt: tuple[str, ...] | None = None  # the NAG negative as text, when given as text
    encoding_negative: bool = False  # True while the pipeline's encode_prompt encodes the NAG negative
    negative_cache: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # NAGState -> per layer [sum of r, tokens clipped, tokens]
    guided_timesteps: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    family: Any = None  # the family module's own per-call values (its dataclass, created by its hooks)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


class NAGState:
    """Mutable state of one hooked denoiser (see the module docstring)."""

    def __init__(self, cond_first: bool = False, timestep_units: str = "scheduler") -> None:
        self.cond_first = cond_first  # the family batches CFG as [cond, uncond]
        self.timestep_units = timestep_units  # how the denoiser's timestep relates to the scheduler's
        self.forward: ForwardPlan | None = None
        self.forward_lock = threading.RLock()  # held from the denoiser's pre-hook to its post-hook
        self.layers: list[str] = []  # names of the wrapped layers; a layer's index is its row in the statistics
        self.rewrappers: list[Callable[[], list[str]]] = []  # wrap what diffusers replaced since (see processors)
        self._armed = threading.local()  # per thread: the stack of armed calls (None: suspended)

    def add_layer(self, name: str) -> int:
        if name not in self.layers:
            self.layers.append(name)
        return self.layers.index(name)

    # -- call lifetime -------------------------------------------------------------------------

    @property
    def call(self) -> CallInfo | None:
        """The calling thread's innermost armed call (None: run as stock)."""
        stack = getattr(self._armed, "stack", None)
        return stack[-1] if stack else None

    def arm(self, call: CallInfo | None) -> None:
        """Guide this thread's forwards by ``call`` until ``disarm`` (None: run them as stock meanwhile)."""
        if not hasattr(self._armed, "stack"):
            self._armed.stack = []
        self._armed.stack.append(call)

    def disarm(self, call: CallInfo | None) -> None:
        stack = getattr(self._armed, "stack", [])
        if not stack or stack[-1] is not call:
            raise RuntimeError("NAG calls on one denoiser must end in the order they began")
        stack.pop()

    # -- per denoiser forward ------------------------------------------------------------------

    def _advance_step(self, call: CallInfo, timestep: Any) -> None:
        """Count denoising steps (a step starts whenever the denoiser's timestep changes) and keep the step's
        scheduler timestep.

        Reading the value costs a host sync, so it is only done when the window is partial; with the full window
        every forward is in it and the steps are counted from the kept timesteps at the end. A timestep per frame or
        per token (diffusion forcing, Wan 2.2 TI2V), where conditioning frames stay at 0, counts as its largest:
        the noisiest frame's.
        """
        if call.config.full_window:
            return
        value = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        if value != call.last_timestep:
            call.step_index += 1
            call.last_timestep = value

    def in_window(self, call: CallInfo) -> bool:
        t = None if call.last_timestep is None else scheduler_timestep(call.last_timestep, self.timestep_units)
        inside = window_guides(call.config, t, call.step_index, call.num_steps, call.schedule)
        if inside is None:
            unknown = "the scheduler" if call.config.window == "schedule" else "the number of denoising steps"
            call.note(f"{unknown} is unknown: the start/end window was not applied")
            return True
        return inside

    def plan_forward(self, batch: int, text: Any, timestep: Any) -> ForwardPlan | None:
        """Which rows of this denoiser forward to guide (None: run it exactly as stock).

        Rules, in order: outside a NAG call or the step window -> none; a ``cache_context`` other than
        "cond"/"cond_uncond" -> none. Batch 2N with N prompt rows -> rows N..2N (diffusers' [uncond, cond] CFG
        batch; rows 0..N for families that batch [cond, uncond]). Batch N -> one branch of a pipeline that calls
        the denoiser once per branch: guided unless the text input is the pipeline's own CFG negative (by
        identity, then by value). Any other layout -> none, with a note in the report. A pipeline with branches
        of its own (``CallInfo.branch_rows``: PAG, InstructPix2Pix) says which rows to guide.
        """
        self.forward = None
        call = self.call
        if call is None or call.negative is None:
            return None
        if call.num_steps is None and call.count_steps is not None:
            call.num_steps = call.count_steps()
        self._advance_step(call, timestep)
        uncond = call.context == "uncond" or (call.context is None and _is_uncond(call, text))
        call.separate_uncond = call.separate_uncond or uncond  # even outside the window (PAB's refusal needs it)
        if not self.in_window(call):
            return None
        if call.context not in GUIDED_CONTEXTS:
            return None
        cond = call.cond_embeds.shape[0] if isinstance(call.cond_embeds, torch.Tensor) else call.prompt_rows
        if call.branch_rows is not None:
            prompts = call.prompt_rows or cond
            rows = call.branch_rows(batch, prompts) if prompts else None
            if rows is None:
                call.note(f"denoiser batch {batch} is none of this pipeline's branch layouts: left unguided")
                return None
        elif cond is not None and batch == 2 * cond and call.context != "cond":
            rows = slice(0, cond) if self.cond_first else slice(cond, batch)
        elif cond is None or batch == cond:
            if uncond:
                return None
            rows = slice(0, batch)
        else:
            call.note(f"denoiser batch {batch} does not fit {cond} prompt rows: that forward was left unguided")
            return None
        call.guided_timesteps.append(timestep)
        stats = call.stats.get(self)
        if stats is None:
            device = text.device if isinstance(text, torch.Tensor) else None
            stats = call.stats[self] = torch.zeros(len(self.layers), 3, dtype=torch.float32, device=device)
        self.forward = ForwardPlan(rows=rows, batch=batch, call=call, stats=stats)
        return self.forward

    def negative_rows(self, count: int, *, device: torch.device, dtype: torch.dtype) -> NegativeText:
        """The negative expanded to ``count`` rows; cached for the call (the same every step)."""
        call = self.call
        key = (count, device, dtype)
        if key not in call.negative_cache:
            call.negative_cache[key] = call.negative.rows(count, device=device, dtype=dtype)
        return call.negative_cache[key]

    # -- guidance ------------------------------------------------------------------------------

    def guide_(self, layer: int, z_pos: torch.Tensor, z_neg: torch.Tensor) -> None:
        """NAG on the conditional rows' attention output, written into ``z_pos`` (which may be a view of a larger
        buffer); records the ratios of layer number ``layer`` for the report.

        The statistics go into one preallocated tensor, never into Python numbers or containers, so a compiled
        denoiser sees the same guards at every step and never recompiles.
        """
        plan = self.forward
        config = plan.call.config
        _, ratio = normalized_attention_guidance_(
            z_pos, z_neg, config.scale, config.tau, config.alpha, return_ratio=True
        )
        counts = torch.stack([ratio.sum(), (ratio > config.tau).sum().float(), ratio.new_tensor(ratio.numel())])
        plan.stats[layer].add_(counts.to(plan.stats.device))


def _is_uncond(call: CallInfo, text: Any) -> bool:
    """Whether ``text`` is the pipeline's own CFG negative (by identity, then by value)."""
    uncond, cond = call.uncond_embeds, call.cond_embeds
    if not isinstance(text, torch.Tensor) or not isinstance(uncond, torch.Tensor):
        return False
    if text is uncond:
        return True
    if text is cond or text.shape != uncond.shape:
        return False
    same_as_uncond = torch.equal(text, uncond.to(text.device, text.dtype))
    same_as_cond = isinstance(cond, torch.Tensor) and torch.equal(text, cond.to(text.device, text.dtype))
    return same_as_uncond and not same_as_cond


def distinct_steps(timesteps: Any) -> int:
    """The number of denoising steps in a scheduler's timesteps: runs of equal values count once (Heun and other
    second-order schedulers evaluate most timesteps twice; custom sigmas may repeat)."""
    values = timesteps.reshape(-1).tolist() if isinstance(timesteps, torch.Tensor) else [float(t) for t in timesteps]
    return sum(1 for i, v in enumerate(values) if i == 0 or v != values[i - 1])
