"""NAG under diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(...))``).

Each cell runs two ranks (tests/compat/cp_worker.py) that compare the parallel run with the one-process run of the
same applied pipeline. Ulysses runs here, on CPU with gloo (see the worker for the one thing it adjusts). Ring
attention cannot run on CPU in diffusers 0.42.1: it needs a backend that returns the log-sum-exp, and of the
backends registered with ``supports_context_parallel=True`` the only CPU one, "native", raises "Native attention
does not support return_lse=True"; the others (flash, FA3, cuDNN, sage, NPU, native flash) need CUDA (or NPU)
half-precision kernels. Its cells need two CUDA GPUs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.helpers import relative_diff

REFUSAL = "transformer runs with context parallelism (enable_parallelism)"
JOINT_WHY = "with ring attention, which NAG's joint attention does not follow"
ROOT = Path(__file__).resolve().parents[2]


def _parallel_runs(case: str, degree: str, device: str, tmp_path: Path, port: int) -> dict:
    out = tmp_path / "result.pt"
    command = [sys.executable, "-m", "tests.compat.cp_worker", case, degree, device, str(out), str(port)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(out, weights_only=False)
    assert "error" not in result, result.get("traceback")
    return result


def _assert_refused(result: dict, why: str, tolerance: float) -> None:
    """NAG refuses the parallel call with a clear error before any compute; diffusers' own parallel run, after it,
    matches the one-process one."""
    assert relative_diff(result["single_nag"], result["single_stock"]) > 1e-3  # NAG acts without parallelism
    assert REFUSAL in result["refusal"] and why in result["refusal"], result.get("refusal")
    assert relative_diff(result["parallel_stock"], result["single_stock"]) < tolerance


def _assert_equal(result: dict, tolerance: float) -> None:
    """NAG under parallelism gives what it gives on one process."""
    assert result["report"].active and result["report"].steps_guided == result["report"].steps_total
    assert not result["warnings"]
    assert relative_diff(result["single_nag"], result["single_stock"]) > 1e-3
    assert relative_diff(result["parallel_nag"], result["single_nag"]) < tolerance


@pytest.mark.compat("Context parallel", "ContextParallelConfig(ulysses_degree=2)", "equal")
@pytest.mark.parametrize("case", ["flux", "flux-kontext", "flux2"], ids=["flux", "flux-kontext", "flux2"])
def test_ulysses_joint_attention_equal(case: str, tmp_path: Path) -> None:
    """Joint-attention NAG under Ulysses equals NAG on one process: the guided call trades the ranks' sequence
    shards for head shards, guides the whole [prompt | negative | image] sequence, and takes NAG's per-token norms
    on each rank's own image tokens (before, it attended within each rank's shard only: on Flux 3.8 % off,
    silently)."""
    _assert_equal(_parallel_runs(case, "ulysses_degree", "cpu", tmp_path, 29611), tolerance=1e-5)


@pytest.mark.compat("Context parallel", "ContextParallelConfig(ulysses_degree=2)", "equal")
@pytest.mark.parametrize("case", ["wan21-t2v"], ids=["wan21-t2v"])
def test_ulysses_cross_attention_equal(case: str, tmp_path: Path) -> None:
    """Cross-attention NAG under Ulysses equals NAG on one process (it is per image token; the text is not
    sharded)."""
    _assert_equal(_parallel_runs(case, "ulysses_degree", "cpu", tmp_path, 29621), tolerance=1e-5)


@pytest.mark.compat("Context parallel", "ContextParallelConfig(ulysses_degree=2), text sharded", "refused")
@pytest.mark.parametrize("case", ["ltx"], ids=["ltx"])
def test_ulysses_sharded_text_refused(case: str, tmp_path: Path) -> None:
    """Cross-attention NAG on a model whose ``_cp_plan`` shards the text (LTX-Video) is refused with a clear error
    before any compute: each rank would hold part of the [prompt | negative] text NAG splits. (diffusers 0.42.1's
    own Ulysses run of the tiny LTX fails on CPU without NAG, a size mismatch at its text mask, so the stock
    parallel output is not compared.)"""
    result = _parallel_runs(case, "ulysses_degree", "cpu", tmp_path, 29651)
    assert REFUSAL in result["refusal"] and "which shards the text (encoder_hidden_states)" in result["refusal"]
    assert relative_diff(result["single_nag"], result["single_stock"]) > 1e-3
    # diffusers' own Ulysses run of LTX fails here, without NAG, on its text mask: nothing to compare it with
    assert "must match the size" in result["parallel_stock_error"]


@pytest.mark.compat("Context parallel", "ContextParallelConfig(ring_degree=2)", "refused")
@pytest.mark.parametrize("case", ["flux"], ids=["flux"])
def test_ring_joint_attention_refused(case: str, tmp_path: Path) -> None:
    """Joint-attention NAG under ring attention is refused with a clear error before any compute."""
    if torch.cuda.device_count() < 2:
        pytest.skip("ring attention needs a log-sum-exp backend: CUDA only in diffusers 0.42.1, two GPUs")
    _assert_refused(_parallel_runs(case, "ring_degree", "cuda", tmp_path, 29631), JOINT_WHY, tolerance=2e-2)


@pytest.mark.compat("Context parallel", "ContextParallelConfig(ring_degree=2)", "equal")
@pytest.mark.parametrize("case", ["wan21-t2v"], ids=["wan21-t2v"])
def test_ring_cross_attention_equal(case: str, tmp_path: Path) -> None:
    """Cross-attention NAG under ring attention equals NAG on one process (bfloat16 on cuDNN: 2e-2 relative)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("ring attention needs a log-sum-exp backend: CUDA only in diffusers 0.42.1, two GPUs")
    _assert_equal(_parallel_runs(case, "ring_degree", "cuda", tmp_path, 29641), tolerance=2e-2)
