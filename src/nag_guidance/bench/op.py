"""The NAG combine operator alone, against one elementwise pass over the same tensors (``torch.add`` of Z+ and Z-
into a preallocated output: read two, write one). Eager out-of-place, eager in-place and ``torch.compile``'d; on
CUDA also the achieved bandwidth against a device-to-device copy.

The reference pass writes into a preallocated buffer because on CPU a fresh output of this size costs page faults
that take longer than the pass itself; an allocating ``torch.add`` is timed too, so that cost is visible."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from nag_guidance.functional import normalized_attention_guidance, normalized_attention_guidance_

ARGS = (5.0, 2.5, 0.25)  # scale, tau, alpha: the flux presets


def _median_ms(
    fn: Callable[[], Any], repeats: int, device: torch.device, setup: Callable[[], Any] | None = None
) -> float:
    """Median time of ``fn`` alone; ``setup`` (e.g. restoring an in-place operand) runs before each call, untimed.
    On CUDA the time is taken with events around ``fn`` on the stream, so launches count and the setup does not."""
    times = []
    for index in range(3 + repeats):
        if setup is not None:
            setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end) / 1000
        else:
            begin = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - begin
        if index >= 3:  # the first calls warm caches (and compile)
            times.append(elapsed)
    return 1000 * sorted(times)[len(times) // 2]


def bench_combine(
    shape: tuple[int, ...] = (1, 4096, 3072),
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    repeats: int = 10,
    compile: bool = True,
) -> dict[str, Any]:
    """Median times (ms) of each variant and their ratios to the elementwise pass (``pass``)."""
    dev = torch.device(device)
    generator = torch.Generator(device=dev).manual_seed(0)
    z_pos = torch.randn(shape, generator=generator, device=dev, dtype=dtype)
    z_neg = torch.randn(shape, generator=generator, device=dev, dtype=dtype)
    buffer = torch.empty_like(z_pos)

    def restore() -> None:
        buffer.copy_(z_pos)

    out_of_place: dict[str, Callable] = {"nag": normalized_attention_guidance}
    in_place: dict[str, Callable] = {"nag_inplace": normalized_attention_guidance_}
    if compile:
        out_of_place["nag_compiled"] = torch.compile(normalized_attention_guidance, fullgraph=True, dynamic=False)
        in_place["nag_inplace_compiled"] = torch.compile(normalized_attention_guidance_, fullgraph=True, dynamic=False)
    times = {
        "pass": _median_ms(lambda: torch.add(z_pos, z_neg, out=buffer), repeats, dev),
        "add": _median_ms(lambda: torch.add(z_pos, z_neg), repeats, dev),
    }
    for name, fn in out_of_place.items():
        times[name] = _median_ms(lambda fn=fn: fn(z_pos, z_neg, *ARGS), repeats, dev)
    for name, fn in in_place.items():
        times[name] = _median_ms(lambda fn=fn: fn(buffer, z_neg, *ARGS), repeats, dev, setup=restore)
    result: dict[str, Any] = {
        "shape": list(shape),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "ms": times,
        "ratio_to_pass": {name: value / times["pass"] for name, value in times.items() if name != "pass"},
    }
    if dev.type == "cuda":
        moved = 3 * z_pos.numel() * z_pos.element_size()  # the least any variant must move: read Z+ and Z-, write one
        copy_ms = _median_ms(lambda: buffer.copy_(z_pos), repeats, dev)
        result["bandwidth_gb_s"] = {name: moved / (value / 1000) / 1e9 for name, value in times.items()}
        result["copy_bandwidth_gb_s"] = 2 * z_pos.numel() * z_pos.element_size() / (copy_ms / 1000) / 1e9
    return result
