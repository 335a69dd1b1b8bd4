"""Cells of diffusers' offloading and layerwise casting with NAG on, on SD 1.5 (cross attention), Flux and
Qwen-Image (joint attention). Offloading on this CPU-only machine moves weights between "cpu" and "cpu", which still
runs every accelerate / diffusers hook (weights onloaded per module or block, streams of group offloading off)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import pytest
import torch

import nag_guidance as nag
from tests.integration import test_cross_attention, test_joint_attention
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate, relative_diff
from tests.integration.joint_cases import BY_ID as JOINT

NEGATIVE = "blurry dog"
NAG = {"nag_negative_prompt": NEGATIVE, "nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}
FAMILIES = [CROSS["sd15"], JOINT["flux"], JOINT["qwen-image"]]
IDS = [case.id for case in FAMILIES]
CPU = torch.device("cpu")


def _denoiser(pipe: Any, case: Any) -> torch.nn.Module:
    return getattr(pipe, case.denoisers[0])


OFFLOADS: dict[str, Callable[[Any, Any], None]] = {
    "enable_model_cpu_offload": lambda pipe, case: pipe.enable_model_cpu_offload(device="cpu"),
    "enable_sequential_cpu_offload": lambda pipe, case: pipe.enable_sequential_cpu_offload(device="cpu"),
    "enable_group_offload(block_level)": lambda pipe, case: _denoiser(pipe, case).enable_group_offload(
        onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1
    ),
    "enable_group_offload(leaf_level)": lambda pipe, case: _denoiser(pipe, case).enable_group_offload(
        onload_device=CPU, offload_device=CPU, offload_type="leaf_level"
    ),
}


def _skip_unless_stock_runs(feature: str, case: Any) -> None:
    """Skip (with the stock error) where the feature fails without NAG in this environment."""
    pipe = case.make()
    OFFLOADS[feature](pipe, case)
    try:
        generate(pipe, case)
    except TypeError as error:
        versions = f"accelerate {importlib.metadata.version('accelerate')}, torch {torch.__version__}"
        pytest.skip(f"{feature} fails without NAG here ({versions}): TypeError: {str(error).split(', but')[0]}")


def _offload_cell(feature: str) -> Callable:
    def cell(case: Any) -> None:
        if feature == "enable_sequential_cpu_offload":
            _skip_unless_stock_runs(feature, case)
        pipe = nag.apply(case.make())
        plain = generate(pipe, case, nag=NAG)
        OFFLOADS[feature](pipe, case)
        offloaded = generate(pipe, case, nag=NAG)
        assert pipe.nag_report.active and pipe.nag_report.steps_guided > 0
        assert relative_diff(offloaded, plain) <= 1e-6
        nag.remove(pipe)
        assert relative_diff(generate(pipe, case), plain) > 1e-3  # the offloaded pipeline is stock again

    cell.__doc__ = f"NAG with {feature} equals NAG without it (1e-6); NAG removed afterwards runs stock."
    return pytest.mark.compat("Offloading", feature, "equal")(pytest.mark.parametrize("case", FAMILIES, ids=IDS)(cell))


test_model_cpu_offload = _offload_cell("enable_model_cpu_offload")
test_sequential_cpu_offload = _offload_cell("enable_sequential_cpu_offload")
test_group_offload_block_level = _offload_cell("enable_group_offload(block_level)")
test_group_offload_leaf_level = _offload_cell("enable_group_offload(leaf_level)")


def _reference(case: Any, pipe: Any) -> torch.Tensor:
    """The independent slow reference of the case's kind on ``pipe`` (NAG removed)."""
    if case.id in CROSS:
        return test_cross_attention.reference(case, pipe, [NEGATIVE], cond_rows=1)[0]
    return test_joint_attention.reference(case, NEGATIVE, pipe=pipe)[0]


@pytest.mark.compat("Casting", "enable_layerwise_casting(float8_e4m3fn storage, float32 compute)", "equal")
@pytest.mark.parametrize("case", FAMILIES, ids=IDS)
def test_layerwise_casting(case: Any) -> None:
    """NAG on a denoiser stored in float8 and computed in float32 equals the slow reference on the same cast model
    (1e-5), and differs from NAG on the uncast model (the casting really happened)."""
    pipe = nag.apply(case.make())
    uncast = generate(pipe, case, nag=NAG)
    _denoiser(pipe, case).enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    cast = generate(pipe, case, nag=NAG)
    assert pipe.nag_report.active and relative_diff(cast, uncast) > 1e-4
    nag.remove(pipe)
    assert relative_diff(cast, _reference(case, pipe)) <= 1e-5
