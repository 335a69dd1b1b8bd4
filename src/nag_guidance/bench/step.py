"""Per-step time and peak memory of the denoiser under each guidance condition, for one pipeline.

Only the denoiser is timed (forward pre/post hooks, summed over a pipeline call and divided by its steps), so text
encoding, scheduler and latent preparation are excluded; outputs stay latent. The conditions are interleaved within
every repeat (the order rotates), and each condition's ratio is the median over repeats of its time divided by the
unguided time of the same repeat, which cancels the slow drifts of a shared machine.
"""

from __future__ import annotations

import inspect
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import nag_guidance as nag
from nag_guidance.bench.configs import BenchConfig
from nag_guidance.integration import Family, detect

PROMPT = "a photo of a red car on a wet street at night, cinematic lighting, high detail"
NEGATIVE = "blurry, low quality"
CFG_SCALE = 4.0
CONDITIONS: dict[str, str] = {
    "none": "no guidance",
    "cfg": f"the pipeline's own CFG (scale {CFG_SCALE:g}, negative_prompt)",
    "nag": "NAG over every step",
    "nag_end_0.5": "NAG over the first half of the schedule (nag_end 0.5)",
    "nag_end_0.25": "NAG over the first quarter of the schedule (nag_end 0.25)",
    "nag_pooled_negative": "NAG over every step, pooled='negative' (the authors' Flux method; Flux family only)",
}


def condition_kwargs(family: Family, condition: str) -> dict[str, Any] | None:
    """The call arguments of a condition; None when the family's pipelines have no CFG with a negative prompt.
    NAG gets its preset's scale, τ and α, and an explicit window (a preset may end early); None also for
    ``pooled="negative"`` where the family does not offer it."""
    if condition == "none":
        return {}
    if condition == "cfg":
        return None if family.cfg_argument is None else {family.cfg_argument: CFG_SCALE, "negative_prompt": NEGATIVE}
    if condition == "nag_pooled_negative":
        if family.negative_rows is None:
            return None
        return {"nag_negative_prompt": NEGATIVE, "nag_start": 0.0, "nag_end": 1.0, "nag_pooled": "negative"}
    end = {"nag": 1.0, "nag_end_0.5": 0.5, "nag_end_0.25": 0.25}[condition]
    return {"nag_negative_prompt": NEGATIVE, "nag_start": 0.0, "nag_end": end}


class DenoiserTimer:
    """Sums the wall time of the denoisers' forwards. The pre-hook goes first, before NAG's own (which appends the
    negative text and belongs to NAG's cost); on CUDA both hooks synchronize, so the time is the forward's.

    While ``inspecting``, it also records the first forward's input shapes and counts the batch rows of every forward
    (untimed: before the clock starts), which shows what each condition really ran (CFG: twice the rows)."""

    def __init__(self, denoisers: list[torch.nn.Module], text_arg: str) -> None:
        self.total = 0.0
        self.forwards = 0
        self.inspecting = False
        self.inputs: dict[str, Any] = {}
        self.rows = 0
        self._started = 0.0
        self._text_arg = text_arg
        self._handles = []
        for module in denoisers:
            self._handles.append(module.register_forward_pre_hook(self._pre, prepend=True, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post, always_call=True))

    def reset(self, inspect_inputs: bool = False) -> None:
        self.total, self.forwards, self.rows = 0.0, 0, 0
        self.inspecting, self.inputs = inspect_inputs, {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.inspecting:
            bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs).arguments
            latent = bound[list(bound)[1]]
            self.rows += len(latent)  # a batch tensor, or Z-Image's list of per-sample tensors
            if not self.inputs:
                self.inputs = {name: _shape(bound.get(name)) for name in (list(bound)[1], self._text_arg)}
        _synchronize()
        self._started = time.perf_counter()

    def _post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        _synchronize()
        self.total += time.perf_counter() - self._started
        self.forwards += 1


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_shape(item) for item in value]
    return None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Some torch builds' profiler prints two lines to the C-level stderr at every start and stop; a run starts it
    a hundred times."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak of the tensor memory allocated while ``fn`` runs, above what was allocated when it started (so the
    weights do not count). CUDA: ``torch.cuda.max_memory_allocated``. CPU: the running sum of the allocations and
    frees the torch profiler records (tensor bytes as the allocator sees them: no fragmentation, no non-tensor
    memory)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak / 2**20


def bench_config(config: BenchConfig, device: str, dtype: torch.dtype, steps: int, repeats: int) -> dict[str, Any]:
    """Build the pipeline, apply NAG, measure every condition; returns the JSON row of this config."""
    dev = torch.device(device)
    started = time.perf_counter()
    pipe = nag.apply(config.build().to(dev, dtype))
    family = detect(pipe)
    denoisers = [getattr(pipe, name) for name in family.denoisers if getattr(pipe, name, None) is not None]
    timer = DenoiserTimer(denoisers, family.text_arg)
    conditions = {name: kw for name in CONDITIONS if (kw := condition_kwargs(family, name)) is not None}

    def call(condition: str, num_steps: int) -> None:
        pipe(prompt=PROMPT, num_inference_steps=num_steps, **{**config.call, **conditions[condition]})

    results: dict[str, dict[str, Any]] = {name: {"ms_per_step": [], "ratios": []} for name in conditions}
    try:
        call("none", 1)  # one-time allocations (caches, lazily built tables) must not count as any condition's
        for name in conditions:  # one 1-step call each: warms up, and measures memory outside the timed calls
            results[name]["peak_mib"] = peak_memory_mib(lambda name=name: call(name, 1), dev)
        for repeat in range(repeats):
            names = list(conditions)
            shift = repeat % len(names)
            seconds = {}
            for name in names[shift:] + names[:shift]:
                timer.reset(inspect_inputs=repeat == 0)
                call(name, steps)
                seconds[name] = timer.total
                if repeat == 0:
                    results[name].update(
                        forwards_per_step=timer.forwards / steps, rows_per_step=timer.rows / steps, inputs=timer.inputs
                    )
                if name.startswith("nag"):
                    report = pipe.nag_report
                    if not report.active:
                        raise RuntimeError(f"NAG had no effect on {config.family} ({name}): {report}")
                    results[name]["nag_steps"] = f"{report.steps_guided}/{report.steps_total}"
            for name, value in seconds.items():
                results[name]["ms_per_step"].append(1000 * value / steps)
                results[name]["ratios"].append(value / seconds["none"])
    finally:
        timer.remove()
    row: dict[str, Any] = {
        "family": config.family,
        "kind": config.kind,
        "pipeline": type(pipe).__name__,
        "denoiser": config.denoiser,
        "shape": config.shape,
        "inputs": results["none"]["inputs"],
        "steps": steps,
        "repeats": repeats,
        "conditions": {},
    }
    for name, values in results.items():
        row["conditions"][name] = {
            "median_ms_per_step": statistics.median(values["ms_per_step"]),
            "median_ratio": statistics.median(values["ratios"]),
            **values,
        }
    row["seconds"] = time.perf_counter() - started
    return row
