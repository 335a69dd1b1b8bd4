"""The ranks of a context-parallel run, for tests/compat/test_context_parallel.py.

``python -m tests.compat.cp_worker CASE DEGREE DEVICE OUT PORT`` spawns two ranks that each build the tiny CASE
pipeline, apply NAG and run it without and with a NAG negative, then enable diffusers' context parallelism
(``ContextParallelConfig(DEGREE=2)``, DEGREE "ulysses_degree" or "ring_degree") on its transformer and run both
again (NAG first); rank 0 saves the latents, the report and the NAG warnings of the parallel NAG call (or its
refusal, and the stock parallel run's own error if it fails) to OUT, or the error a rank raised (``{"error": ...}``).

DEVICE "cpu": gloo, diffusers' native attention backend, float32. diffusers 0.42.1's ``enable_parallelism``
places rank r on ``torch.device(accelerator, r % device_count())``, which divides by zero on a CPU-only machine
(``device_count()`` is 0); the ranks give it a count of 1, so the mesh and each rank's device are the CPU.
DEVICE "cuda": nccl, one GPU per rank, the ``_native_cudnn`` backend (it returns the log-sum-exp ring attention
needs), bfloat16.

Each rank leaves with ``os._exit(0)`` once its process group is destroyed, skipping interpreter teardown: after
diffusers' failing LTX run gloo can still hold work in its threads, and a rank of that cell aborted once in CI
("terminate called without an active exception", SIGABRT; never reproduced here in seven runs).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
NAG = {"nag_negative_prompt": "blue", "nag_scale": 5.0, "nag_tau": 2.5, "nag_alpha": 0.5, "nag_end": 1.0}


def _case(case_id: str):
    from tests.integration.cases import BY_ID as CROSS
    from tests.integration.joint_cases import BY_ID as JOINT

    return JOINT[case_id] if case_id in JOINT else CROSS[case_id]


def _runs(case_id: str, degree: str, device: str) -> dict:
    import diffusers
    from diffusers import ContextParallelConfig

    import nag_guidance as nag
    from tests.integration.helpers import generate

    diffusers.utils.logging.set_verbosity_error()
    case = _case(case_id)
    pipe = case.make()
    if device == "cuda":
        pipe.to(f"cuda:{dist.get_rank()}", torch.bfloat16)
        pipe.transformer.set_attention_backend("_native_cudnn")
    nag.apply(pipe)
    result = {"single_stock": generate(pipe, case), "single_nag": generate(pipe, case, nag=NAG)}
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(**{degree: WORLD}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result["parallel_nag"] = generate(pipe, case, nag=NAG)
            result["report"] = pipe.nag_report
        except ValueError as error:  # NAG's refusal, raised before any compute
            result["refusal"] = str(error)
    try:  # after the NAG call: a refused call must leave the pipeline as it was
        result["parallel_stock"] = generate(pipe, case)
    except RuntimeError as error:  # diffusers' own parallel run failing here (LTX on CPU)
        result["parallel_stock_error"] = f"{type(error).__name__}: {error}"
    result["warnings"] = [str(w.message) for w in caught if "NAG" in str(w.message)]
    return {k: v.float().cpu() if isinstance(v, torch.Tensor) else v for k, v in result.items()}


def _rank(rank: int, case_id: str, degree: str, device: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if device == "cpu":
        torch.accelerator.device_count = lambda: 1  # see the module docstring
    else:
        torch.cuda.set_device(rank)
    dist.init_process_group("gloo" if device == "cpu" else "nccl", rank=rank, world_size=WORLD)
    try:
        result = _runs(case_id, degree, device)
    except Exception as error:  # reported to the test, which asserts on it
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see the module docstring


if __name__ == "__main__":
    case_id, degree, device, out, port = sys.argv[1:6]
    mp.spawn(_rank, args=(case_id, degree, device, out, int(port)), nprocs=WORLD)
