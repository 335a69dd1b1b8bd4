"""`nag bench`: times the combine operator and the denoiser step of every family, writes ``benchmarks.json`` and
``benchmarks.md`` and returns the page. The torch thread count is left as the caller set it (torch's default is one
per core) and is recorded with the machine, as are the OpenMP variables and the load, which decide how much a shared
machine's numbers can be trusted."""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from nag_guidance.bench.configs import FULL_SIZE, FULL_SIZE_QUICK, FULL_SIZE_TARGETS, REALISTIC, TINY, BenchConfig
from nag_guidance.bench.op import bench_combine
from nag_guidance.bench.report import markdown
from nag_guidance.bench.step import CFG_SCALE, CONDITIONS, NEGATIVE, PROMPT, bench_config
from nag_guidance.files import write_text_atomically

QUICK_FAMILIES = ("sd", "sd3", "flux")


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full run keeps to about a quarter of an hour on a 2-core CPU."""

    steps: int = 4  # so that nag_end 0.25 and 0.5 guide 1 and 2 steps
    tiny_repeats: int = 7
    realistic_repeats: int = 3
    full_size_repeats: int = 3  # all four full-size denoisers in about 3 minutes on one H200
    op_shape: tuple[int, ...] = (1, 4096, 3072)  # FLUX's image tokens × width: one attention output
    op_repeats: int = 20
    op_compile: bool = True


QUICK = Settings(tiny_repeats=3, full_size_repeats=2, op_shape=(1, 1024, 256), op_repeats=5, op_compile=False)


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import diffusers
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    described = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "environment": {
            k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ
        },
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def _full_size_configs(
    families: tuple[str, ...] | None, quick: bool, device: torch.device, dtype: torch.dtype
) -> list[BenchConfig]:
    """The full-size denoisers (scaled down with ``quick``), bound to build their weights on ``device``."""
    configs = FULL_SIZE_QUICK if quick else FULL_SIZE
    known = [config.family for config in configs]
    unknown = sorted(set(families or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown full-size families {unknown}; known: {', '.join(known)}")
    return [config.on(device, dtype) for config in configs if families is None or config.family in families]


def _attention_backend() -> str:
    """diffusers' active attention backend (``DIFFUSERS_ATTN_BACKEND`` or ``attention_backend(...)``)."""
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    except ImportError:  # a diffusers without the dispatcher: PyTorch's SDPA
        return "native"
    backend = _AttentionBackendRegistry._active_backend
    return str(getattr(backend, "value", backend))


def _target(row: dict[str, Any]) -> dict[str, Any]:
    target = FULL_SIZE_TARGETS[row["family"]]
    ratio = row["conditions"]["nag"]["median_ratio"]
    return {"condition": "nag", "nag_over_unguided": ratio, "target": target, "met": ratio <= target}


def _configs(families: tuple[str, ...] | None, quick: bool, realistic: bool) -> list[BenchConfig]:
    known = {config.family for config in TINY}
    unknown = sorted(set(families or ()) - known)
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(sorted(known))}")
    chosen = set(families or (QUICK_FAMILIES if quick else known))
    configs = [config for config in TINY if config.family in chosen]
    if realistic:
        configs += [config for config in REALISTIC if config.family in chosen]
    return configs


def _summary(row: dict[str, Any]) -> str:
    conditions = row["conditions"]
    none = conditions["none"]["median_ms_per_step"]
    ratios = ", ".join(f"{name} {value['median_ratio']:.2f}x" for name, value in conditions.items() if name != "none")
    target = ""
    if "target" in row:
        target = f"; target nag ≤ {row['target']['target']:.2f}x {'met' if row['target']['met'] else 'NOT met'}"
    return f"{row['kind']} {row['family']}: {none:.1f} ms/step unguided; {ratios}{target} ({row['seconds']:.0f} s)"


def run(
    out: Path,
    quick: bool = False,
    device: str = "cpu",
    families: tuple[str, ...] | None = None,
    realistic: bool = True,
    full_size: bool = False,
    command: str = "nag bench",
    log: Callable[[str], None] = print,
) -> str:
    """Run the benchmark, write ``out/benchmarks.json`` and ``out/benchmarks.md``, return the Markdown page.

    ``quick``: tiny pipelines of a few families, few repeats, no ``torch.compile`` (for CI; never realistic).
    ``full_size``: only the full-size denoisers (``FULL_SIZE``; with ``quick`` the same four scaled down, to check
    the path on a CPU), their weights created on the device; no combine-operator timing.
    Raises ``ValueError`` for an unknown family or an unavailable device.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available")
    settings = QUICK if quick else Settings()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if full_size:
        configs = _full_size_configs(families, quick, dev, dtype)
    else:
        configs = _configs(families, quick, realistic and not quick)
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if dev.type == "cpu" and torch.get_num_threads() > 1 and load >= 1 and "OMP_WAIT_POLICY" not in os.environ:
        log(
            f"note: the CPU is busy (load average {load:.1f}); OpenMP threads spin-waiting for a busy core can make "
            "every op many times slower: set OMP_WAIT_POLICY=PASSIVE or fewer threads (OMP_NUM_THREADS)"
        )
    result: dict[str, Any] = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine(dev),
        "settings": {**asdict(settings), "prompt": PROMPT, "negative": NEGATIVE, "cfg_scale": CFG_SCALE},
        "conditions": CONDITIONS,
        "attention_backend": _attention_backend(),
        "op": [],
        "steps": [],
        "errors": [],
    }
    if full_size:
        result["full_size_targets"] = FULL_SIZE_TARGETS
    op_dtypes = () if full_size else (torch.float32, torch.bfloat16) if dev.type == "cuda" else (torch.float32,)
    for op_dtype in op_dtypes:
        log(f"combine operator {settings.op_shape} {op_dtype}")
        result["op"].append(
            bench_combine(settings.op_shape, op_dtype, device, settings.op_repeats, compile=settings.op_compile)
        )
    for config in configs:
        repeats = {"realistic": settings.realistic_repeats, "full-size": settings.full_size_repeats}.get(
            config.kind, settings.tiny_repeats
        )
        repeats = max(repeats, config.repeats or 0)
        try:
            row = bench_config(config, device, dtype, settings.steps, repeats)
        except Exception as error:  # one broken pipeline must not cost the rest of a long run
            result["errors"].append({"family": config.family, "kind": config.kind, "error": repr(error)[:500]})
            log(f"{config.kind} {config.family}: failed: {error!r}"[:300])
            continue
        finally:  # a full-size denoiser's weights (24 GB for FLUX) go before the next is built
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if config.kind == "full-size":
            row["target"] = _target(row)
        result["steps"].append(row)
        log(_summary(row))
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "benchmarks.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    page = markdown(result)
    write_text_atomically(out / "benchmarks.md", page)
    return page
