"""Video families whose stock pipelines cannot run the batch test of ``test_cross_attention`` (they make one video
per call): batch 2 is checked on the bare denoiser instead, through ``nag.attach``, against the float64 reference
with one NAG negative per prompt."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import nag_guidance as nag
from nag_guidance.testing import video as fv
from tests.integration.helpers import relative_diff
from tests.integration.reference import ReferenceNAG

CONFIG = nag.NAGConfig(scale=5.0, tau=2.5, alpha=0.5)


def _guided_and_reference(model: torch.nn.Module, family: str, negative: torch.Tensor, inputs: dict):
    """(NAG through ``attach``, the reference, stock) outputs of one forward on ``inputs``, every row guided by its
    own negative (row i by ``negative[i]``). The reference stays installed on ``model``: use it once."""
    with torch.no_grad():
        stock = model(**inputs, return_dict=False)[0]
        handle = nag.attach(model, family=family)
        handle.begin(negative, config=CONFIG, prompt_rows=negative.shape[0])
        guided = model(**inputs, return_dict=False)[0]
        report = handle.end()
        handle.remove()
        reference = ReferenceNAG(
            ("transformer",), "attn2", "encoder_hidden_states", None, (negative, None), 5.0, 2.5, 0.5, negative.shape[0]
        )
        reference.install(SimpleNamespace(transformer=model))
        expected = model(**inputs, return_dict=False)[0]
    assert report.active and report.layers_guided == len(reference.guided_layers) > 0
    return guided, expected, stock


def test_wan_vace_batch_two_with_a_negative_per_prompt():
    pipe = fv.make_wan_vace()
    prompts = fv.wan_prompt_embeds(pipe, ["a red car", "a blue cat"], max_sequence_length=16)
    negatives = fv.wan_prompt_embeds(pipe, ["dog", "dark blurry glasses"], max_sequence_length=16)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(2, 16, 2, 4, 4, generator=g),
        "timestep": torch.tensor([700.0, 700.0]),
        "encoder_hidden_states": prompts,
        "control_hidden_states": torch.randn(2, 96, 2, 4, 4, generator=g),
    }
    guided, expected, stock = _guided_and_reference(pipe.transformer, "wan-vace", negatives, inputs)
    assert relative_diff(guided, expected) <= 1e-5
    assert relative_diff(guided, stock) > 1e-3
