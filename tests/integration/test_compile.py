"""NAG on compiled denoisers: ``torch.compile`` of the whole denoiser and diffusers' regional
``compile_repeated_blocks`` give the eager NAG output, and a compiled denoiser never recompiles from step to step
(checked with dynamo's graph counter: after a warm-up call, calls with another step count compile nothing new)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import nag_guidance as nag
from tests.integration.cases import CASES
from tests.integration.helpers import first_tensor, relative_diff
from tests.integration.joint_cases import JOINT_CASES

BY_ID = {case.id: case for case in [*CASES, *JOINT_CASES]}
NAG = {"nag_negative_prompt": "blue", "nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5}


def _run(pipe, case, steps: int, **nag_args) -> torch.Tensor:
    out = pipe(
        prompt="a red car",
        generator=torch.Generator().manual_seed(0),
        **case.kwargs(num_inference_steps=steps),
        **NAG,
        **nag_args,
    )
    return first_tensor(out[0])


def _compile(pipe, case, mode: str) -> None:
    for attr in case.denoisers:
        model = getattr(pipe, attr, None)
        if model is None:
            continue
        if mode == "whole":
            setattr(pipe, attr, torch.compile(model))
        else:
            model.compile_repeated_blocks()


@pytest.mark.slow
@pytest.mark.compat("Compilation", "torch.compile (whole denoiser) and compile_repeated_blocks", "equal")
@pytest.mark.parametrize(
    ("case_id", "mode", "pooled"),
    [
        ("sd15", "whole", None),
        ("sd15", "regional", None),
        ("wan21-t2v", "regional", None),
        ("flux", "whole", None),
        ("flux", "regional", None),
        ("flux", "whole", "negative"),
        ("flux", "regional", "negative"),
        ("qwen-image", "regional", None),
    ],
)
def test_compiled_denoiser_matches_eager_and_never_recompiles(case_id: str, mode: str, pooled: str | None) -> None:
    torch._dynamo.reset()
    case = BY_ID[case_id]
    pipe = nag.apply(case.make(), pooled=pooled)
    eager = _run(pipe, case, steps=2)
    _compile(pipe, case, mode)
    compiled = _run(pipe, case, steps=2)
    assert pipe.nag_report.active and pipe.nag_report.config.pooled in (pooled, None if pooled else "prompt")
    assert relative_diff(compiled, eager) < 1e-4
    counters.clear()
    again = _run(pipe, case, steps=4)
    assert counters["stats"].get("unique_graphs", 0) == 0, dict(counters["stats"])
    assert pipe.nag_report.steps_guided == 4
    nag.remove(pipe)
    stock = _run_stock(pipe, case, steps=4)
    assert relative_diff(again, stock) > 1e-3  # NAG really acted in the compiled run


def _run_stock(pipe, case, steps: int) -> torch.Tensor:
    out = pipe(prompt="a red car", generator=torch.Generator().manual_seed(0), **case.kwargs(num_inference_steps=steps))
    return first_tensor(out[0])
