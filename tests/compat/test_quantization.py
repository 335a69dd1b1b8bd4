"""Quantized denoisers loaded through diffusers' quantizers: torchao int8 weight-only (``TorchAoConfig``) and GGUF
Q8_0 (``from_single_file`` with ``GGUFQuantizationConfig``), on tiny SD 1.5 and Flux denoisers saved here.

The quantized denoiser replaces the pipeline's before ``nag.apply``. NAG on it must equal the independent slow
reference run on the same quantized pipeline with NAG removed (within 1e-5 relative), guide as many layers as on
the float32 model, and ``nag.remove`` must give back the quantized stock output; the quantized stock output
must differ from the float32 one, so the quantization really acted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import nag_guidance as nag
from tests.compat.test_lora import NAG_CALL, TOLERANCE, reference
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate, relative_diff
from tests.integration.joint_cases import BY_ID as JOINT

FAMILIES = [CROSS["sd15"], JOINT["flux"]]
families = pytest.mark.parametrize("case", FAMILIES, ids=[c.id for c in FAMILIES])
GGUF_BLOCK = 32  # Q8_0 quantizes rows in blocks of 32 values

Quantize = Callable[[torch.nn.Module, Path], torch.nn.Module]


def torchao_int8_weight_only(denoiser: torch.nn.Module, folder: Path) -> torch.nn.Module:
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    denoiser.save_pretrained(folder)
    config = TorchAoConfig(Int8WeightOnlyConfig())
    return type(denoiser).from_pretrained(folder, quantization_config=config, torch_dtype=torch.float32)


def gguf_q8_0(denoiser: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """The denoiser written as a .gguf file, its linear weights Q8_0 (those whose rows split into Q8_0 blocks),
    under diffusers' own key names (which ``from_single_file`` loads as they are), then loaded back."""
    import gguf
    from diffusers import GGUFQuantizationConfig

    linear = {f"{name}.weight" for name, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)}
    path = folder / "denoiser.gguf"
    writer = gguf.GGUFWriter(str(path), arch="tiny")
    for name, tensor in denoiser.state_dict().items():
        array = tensor.detach().float().numpy()
        if name in linear and array.shape[-1] % GGUF_BLOCK == 0:
            q8_0 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8_0), raw_dtype=q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    denoiser.save_config(folder)
    config = GGUFQuantizationConfig(compute_dtype=torch.float32)
    return type(denoiser).from_single_file(
        str(path), config=str(folder), quantization_config=config, torch_dtype=torch.float32
    )


def quantized_keys(denoiser: torch.nn.Module) -> list[str]:
    """The attention key projections that are quantized: diffusers' GGUF layer, or a weight that is no longer a
    plain ``Parameter`` (torchao's int8 tensor subclass)."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    return [
        name
        for name, module in denoiser.named_modules()
        if name.endswith("to_k") and (isinstance(module, GGUFLinear) or type(module.weight) is not torch.nn.Parameter)
    ]


def assert_nag_on_quantized_equals_reference(case: Any, quantize: Quantize, folder: Path) -> None:
    pipe = case.make()
    attr = case.denoisers[0]
    full_precision = generate(pipe, case)
    with nag.applied(pipe):
        generate(pipe, case, nag=NAG_CALL)
        layers = pipe.nag_report.layers_guided
    setattr(pipe, attr, quantize(getattr(pipe, attr), folder))
    assert quantized_keys(getattr(pipe, attr))
    stock = generate(pipe, case)
    assert relative_diff(stock, full_precision) > 1e-4  # the quantization acted
    nag.apply(pipe)
    guided = generate(pipe, case, nag=NAG_CALL)
    report = pipe.nag_report
    assert report.active and report.layers_guided == layers and report.steps_guided == report.steps_total
    nag.remove(pipe)
    assert (generate(pipe, case) - stock).abs().max().item() <= 1e-6
    assert relative_diff(guided, reference(case, pipe)) <= TOLERANCE


@pytest.mark.compat("Quantization", "torchao int8 weight-only (TorchAoConfig(Int8WeightOnlyConfig()))", "equal")
@families
def test_torchao_int8_weight_only(case, tmp_path):
    """NAG on a torchao int8 weight-only denoiser equals the slow reference on the same quantized model."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install -e '.[test]')")
    assert_nag_on_quantized_equals_reference(case, torchao_int8_weight_only, tmp_path)


@pytest.mark.compat("Quantization", "GGUF Q8_0 (from_single_file + GGUFQuantizationConfig)", "equal")
@families
def test_gguf_q8_0(case, tmp_path):
    """NAG on a GGUF Q8_0 denoiser loaded by from_single_file equals the slow reference on the same model."""
    pytest.importorskip("gguf", reason="gguf is not installed (pip install -e '.[test]')")
    assert_nag_on_quantized_equals_reference(case, gguf_q8_0, tmp_path)
