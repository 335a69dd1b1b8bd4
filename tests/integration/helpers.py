"""Shared helpers of the integration tests: seeded generation, tolerances, call recording."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.integration.reference import is_text_layer

PROMPT = "a red car"


def generate(pipe: Any, case: Any, prompt: Any = PROMPT, nag: dict | None = None, **call: Any) -> torch.Tensor:
    """The pipeline's first output (latents) for a fixed seed; ``nag`` holds the ``nag_*`` arguments. torch's global
    generator is seeded too: I2VGenXL samples its image latents from it, not from ``generator``."""
    prompt = list(prompt) if isinstance(prompt, list) else prompt  # some pipelines rewrite the list in place
    torch.manual_seed(0)
    out = pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **case.kwargs(**call), **(nag or {}))
    return out[0]


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: the tiny random models produce latents of very different magnitudes."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, list) and output and all(isinstance(t, torch.Tensor) for t in output):
        return torch.stack(output)  # per-sample lists (Z-Image)
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    return output[0]


def flops_per_forward(pipe: Any, case: Any, nag: dict | None = None, **call: Any) -> list[int]:
    """FLOPs spent up to the end of each denoiser forward since the end of the previous one (the first one also
    counts the text encoding), for one generation."""
    marks: list[int] = []
    with FlopCounterMode(display=False) as mode:
        handles = [
            getattr(pipe, attr).register_forward_hook(lambda *_: marks.append(mode.get_total_flops()))
            for attr in case.denoisers
            if getattr(pipe, attr, None) is not None
        ]
        try:
            generate(pipe, case, nag=nag, **call)
        finally:
            for handle in handles:
                handle.remove()
    return [b - a for a, b in zip([0, *marks], marks, strict=False)]


def query_projection_flops(pipe: Any, case: Any, nag: dict | None = None, **call: Any) -> int:
    """FLOPs of one generation spent in the text-attention layers' query projections."""
    with FlopCounterMode(display=False) as mode:
        generate(pipe, case, nag=nag, **call)
    return sum(sum(ops.values()) for name, ops in mode.get_flop_counts().items() if name.endswith("attn2.to_q"))


class ForwardRecorder:
    """Records the outputs of every forward of some modules (in call order)."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.outputs: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._record) for m in modules]

    def _record(self, module, args, output) -> None:
        self.outputs.append(first_tensor(output).detach().clone())

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class CallCounter:
    """Counts attention calls of the text-attention layers (by their key projections)."""

    def __init__(self, pipe: Any, case: Any) -> None:
        self.counts = {"to_k": 0}
        self.handles = []
        for attr in case.denoisers:
            model = getattr(pipe, attr, None)
            if model is None:
                continue
            for name, module in model.named_modules():
                if is_text_layer(name, case.text_layers):
                    self.handles.append(module.to_k.register_forward_hook(self._count))

    def _count(self, module, args, output) -> None:
        self.counts["to_k"] += 1

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def hook_snapshot(module: torch.nn.Module) -> dict:
    """Every hook container and instance-level override of every submodule, by identity."""
    snapshot = {}
    for name, sub in module.named_modules():
        snapshot[name] = (
            tuple(sub._forward_pre_hooks.items()),
            tuple(sub._forward_hooks.items()),
            sub.__dict__.get("forward"),
            sub.__dict__.get("cache_context"),
            getattr(sub, "processor", None),
        )
    return snapshot
