"""LoRA through diffusers' own LoRA API (load, fuse, unfuse, set_adapters, unload, hotswap), done before or after
``nag.apply``, on real SD 1.5 and Flux pipelines with tiny LoRAs built here.

Every cell runs NAG on the pipeline in its LoRA state, then checks that NAG guided as many layers as without LoRA,
that ``nag.remove`` gives back stock output (that of a twin pipeline given the same LoRA operations and never NAG),
and what the operation should leave: NAG equal to the independent slow reference computed on the very same LoRA'd
model with NAG removed (within 1e-5 relative), and different from NAG without LoRA, so the LoRA really acted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

import nag_guidance as nag
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate, relative_diff
from tests.integration.joint_cases import BY_ID as JOINT
from tests.integration.test_cross_attention import NAG, NEGATIVE
from tests.integration.test_cross_attention import reference as cross_reference
from tests.integration.test_joint_attention import reference as joint_reference

NAG_CALL = {"nag_negative_prompt": NEGATIVE, **NAG}
FAMILIES = [CROSS["sd15"], JOINT["flux"]]
families = pytest.mark.parametrize("case", FAMILIES, ids=[c.id for c in FAMILIES])
TOLERANCE = 1e-5  # relative, as the integration tests' reference checks
HOTSWAP_RANK = 4  # enable_lora_hotswap pads every rank-2 LoRA up to this

Operation = Callable[[Any, Any], None]


@functools.cache
def _lora(case_id: str, seed: int) -> dict[str, torch.Tensor]:
    """A random rank-2 LoRA of the case's denoiser, in diffusers' format (``unet.…lora_A.weight``)."""
    case = CROSS.get(case_id) or JOINT[case_id]
    attr = case.denoisers[0]
    denoiser = getattr(case.make(), attr)
    torch.manual_seed(seed)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    inject_adapter_in_model(config, denoiser)
    return {f"{attr}.{key}": value for key, value in get_peft_model_state_dict(denoiser).items()}


def lora(case: Any, seed: int) -> dict[str, torch.Tensor]:
    """A copy: loading may keep the given tensors as the LoRA's parameters, which a hotswap overwrites."""
    return {key: value.clone() for key, value in _lora(case.id, seed).items()}


def load(pipe: Any, case: Any) -> None:
    pipe.load_lora_weights(lora(case, 1), adapter_name="first")


def load_and_fuse(pipe: Any, case: Any) -> None:
    load(pipe, case)
    pipe.fuse_lora()


def fuse_and_unfuse(pipe: Any, case: Any) -> None:
    load_and_fuse(pipe, case)
    pipe.unfuse_lora()


def two_adapters(pipe: Any, case: Any) -> None:
    load(pipe, case)
    pipe.load_lora_weights(lora(case, 2), adapter_name="second")
    pipe.set_adapters(["first", "second"], adapter_weights=[0.7, 0.4])


def load_and_unload(pipe: Any, case: Any) -> None:
    load(pipe, case)
    pipe.unload_lora_weights()


def hotswap(pipe: Any, case: Any) -> None:
    pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK)
    load(pipe, case)
    pipe.load_lora_weights(lora(case, 3), adapter_name="first", hotswap=True)


@functools.cache
def _plain(case_id: str, operation: Operation | None = None) -> tuple[torch.Tensor, int]:
    """(NAG output, layers guided) on a fresh pipeline given ``operation`` before ``apply`` (none: no LoRA)."""
    case = CROSS.get(case_id) or JOINT[case_id]
    pipe = case.make()
    if operation is not None:
        operation(pipe, case)
    output = generate(nag.apply(pipe), case, nag=NAG_CALL)
    return output, pipe.nag_report.layers_guided


def nag_with(case: Any, operation: Operation | None = None) -> torch.Tensor:
    return _plain(case.id, operation)[0]


def guided(case: Any, when: str, operation: Operation) -> tuple[Any, torch.Tensor]:
    """NAG's output with ``operation`` done ``when`` ("before"/"after") ``nag.apply``, and the pipeline, NAG
    removed; asserts that NAG guided every layer and that removing it gives back stock output."""
    twin = case.make()
    operation(twin, case)
    stock = generate(twin, case)
    pipe = case.make()
    if when == "after":
        nag.apply(pipe)
    operation(pipe, case)
    if when == "before":
        nag.apply(pipe)
    output = generate(pipe, case, nag=NAG_CALL)
    report = pipe.nag_report
    assert report.active and report.layers_guided == _plain(case.id)[1]
    assert report.steps_guided == report.steps_total
    nag.remove(pipe)
    assert (generate(pipe, case) - stock).abs().max().item() <= 1e-6
    return pipe, output


def reference(case: Any, pipe: Any) -> torch.Tensor:
    """The independent slow NAG reference on ``pipe`` as it is (NAG removed); it leaves its hooks on ``pipe``."""
    if case.id in JOINT:
        return joint_reference(case, NEGATIVE, pipe=pipe)[0]
    return cross_reference(case, pipe, [NEGATIVE], cond_rows=1)[0]


def assert_lora_guided_like_reference(case: Any, when: str, operation: Operation) -> torch.Tensor:
    pipe, output = guided(case, when, operation)
    assert relative_diff(output, reference(case, pipe)) <= TOLERANCE
    assert relative_diff(output, nag_with(case)) > 1e-4  # the LoRA acted
    return output


@pytest.mark.compat("LoRA", "load_lora_weights before nag.apply", "equal")
@families
def test_load_lora_weights_before_apply(case):
    """NAG on a LoRA loaded before apply equals the slow reference on the same LoRA'd model."""
    assert_lora_guided_like_reference(case, "before", load)


@pytest.mark.compat("LoRA", "load_lora_weights after nag.apply", "equal")
@families
def test_load_lora_weights_after_apply(case):
    """NAG follows a LoRA loaded after apply: equal to the slow reference on the same LoRA'd model."""
    assert_lora_guided_like_reference(case, "after", load)


@pytest.mark.compat("LoRA", "fuse_lora before nag.apply", "equal")
@families
def test_fuse_lora_before_apply(case):
    """NAG on a LoRA fused into the weights before apply equals the slow reference on the fused model."""
    assert_lora_guided_like_reference(case, "before", load_and_fuse)


@pytest.mark.compat("LoRA", "fuse_lora after nag.apply", "equal")
@families
def test_fuse_lora_after_apply(case):
    """NAG on a LoRA loaded and fused after apply equals the slow reference on the fused model."""
    assert_lora_guided_like_reference(case, "after", load_and_fuse)


@pytest.mark.compat("LoRA", "unfuse_lora before nag.apply", "equal")
@families
def test_unfuse_lora_before_apply(case):
    """fuse_lora then unfuse_lora before apply: NAG equals the reference on the unfused LoRA'd model and NAG with
    the LoRA only loaded (unfusing leaves the LoRA loaded and active)."""
    output = assert_lora_guided_like_reference(case, "before", fuse_and_unfuse)
    assert relative_diff(output, nag_with(case, load)) <= TOLERANCE


@pytest.mark.compat("LoRA", "unfuse_lora after nag.apply", "equal")
@families
def test_unfuse_lora_after_apply(case):
    """fuse_lora then unfuse_lora after apply: NAG equals the reference on the unfused LoRA'd model and NAG with
    the LoRA only loaded (unfusing leaves the LoRA loaded and active)."""
    output = assert_lora_guided_like_reference(case, "after", fuse_and_unfuse)
    assert relative_diff(output, nag_with(case, load)) <= TOLERANCE


@pytest.mark.compat("LoRA", "set_adapters (two weighted adapters) before nag.apply", "equal")
@families
@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")  # peft on a second adapter
def test_set_adapters_before_apply(case):
    """Two LoRAs mixed by set_adapters before apply: NAG equals the reference on the mix, which differs from
    the first LoRA alone."""
    output = assert_lora_guided_like_reference(case, "before", two_adapters)
    assert relative_diff(output, nag_with(case, load)) > 1e-4


@pytest.mark.compat("LoRA", "set_adapters (two weighted adapters) after nag.apply", "equal")
@families
@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")  # peft on a second adapter
def test_set_adapters_after_apply(case):
    """Two LoRAs mixed by set_adapters after apply: NAG equals the reference on the mix, which differs from
    the first LoRA alone."""
    output = assert_lora_guided_like_reference(case, "after", two_adapters)
    assert relative_diff(output, nag_with(case, load)) > 1e-4


@pytest.mark.compat("LoRA", "unload_lora_weights before nag.apply", "equal")
@families
def test_unload_lora_weights_before_apply(case):
    """A LoRA loaded then unloaded before apply: NAG equals NAG on the original model."""
    _, output = guided(case, "before", load_and_unload)
    assert relative_diff(output, nag_with(case)) <= TOLERANCE


@pytest.mark.compat("LoRA", "unload_lora_weights after nag.apply", "equal")
@families
def test_unload_lora_weights_after_apply(case):
    """A LoRA loaded then unloaded after apply: NAG equals NAG on the original model."""
    _, output = guided(case, "after", load_and_unload)
    assert relative_diff(output, nag_with(case)) <= TOLERANCE


@pytest.mark.compat("LoRA", "hotswap (load_lora_weights(hotswap=True)) before nag.apply", "equal")
@families
def test_hotswap_before_apply(case):
    """enable_lora_hotswap, a LoRA, then another hotswapped into its place before apply: NAG equals the reference
    on the swapped model, which differs from the first LoRA."""
    output = assert_lora_guided_like_reference(case, "before", hotswap)
    assert relative_diff(output, nag_with(case, load)) > 1e-4


@pytest.mark.compat("LoRA", "hotswap (load_lora_weights(hotswap=True)) after nag.apply", "equal")
@families
def test_hotswap_after_apply(case):
    """enable_lora_hotswap, a LoRA, then another hotswapped into its place after apply: NAG equals the reference
    on the swapped model, which differs from the first LoRA."""
    output = assert_lora_guided_like_reference(case, "after", hotswap)
    assert relative_diff(output, nag_with(case, load)) > 1e-4


LORA_SCALE_ARGUMENT = {"sd15": "cross_attention_kwargs", "flux": "joint_attention_kwargs"}


@pytest.mark.compat("LoRA", "LoRA scale in the call's attention kwargs (scale 0 and 0.5)", "equal")
@families
def test_lora_scale_of_the_call_reaches_the_denoiser(case):
    """The call's LoRA scale (``cross_attention_kwargs`` / ``joint_attention_kwargs`` = {"scale": s}) reaches
    diffusers' ``@apply_lora_scale``, which reads it from the keywords only: with NAG, scale 0 equals NAG without
    the LoRA and scale 0.5 differs from both 0 and 1 (NAG's denoiser hook once handed it back positionally, and
    every scale ran at 1)."""
    pipe = case.make()
    load(pipe, case)
    nag.apply(pipe)
    argument = LORA_SCALE_ARGUMENT[case.id]
    at = {s: generate(pipe, case, nag=NAG_CALL, **{argument: {"scale": s}}) for s in (0.0, 0.5, 1.0)}
    assert relative_diff(at[0.0], nag_with(case)) <= TOLERANCE
    assert relative_diff(at[1.0], nag_with(case, load)) <= TOLERANCE
    assert relative_diff(at[0.5], at[0.0]) > 1e-4 and relative_diff(at[0.5], at[1.0]) > 1e-4
