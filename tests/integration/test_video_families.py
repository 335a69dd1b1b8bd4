"""Video families whose stock pipelines cannot run the batch test of ``test_cross_attention`` (they make one video
per call, or cannot batch two prompts): batch 2 is checked on the bare denoiser instead, through ``nag.attach``,
against the float64 reference with one NAG negative per prompt."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import nag_guidance as nag
from nag_guidance.testing import video as fv
from tests.integration.helpers import relative_diff
from tests.integration.reference import ReferenceNAG

CONFIG = nag.NAGConfig(scale=5.0, tau=2.5, alpha=0.5)


def _guided_and_reference(
    model: torch.nn.Module, family: str, negative: torch.Tensor, inputs: dict, attr="transformer", layers="attn2"
):
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
            (attr,), layers, "encoder_hidden_states", None, (negative, None), 5.0, 2.5, 0.5, negative.shape[0]
        )
        reference.install(SimpleNamespace(**{attr: model}))
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


def test_i2vgen_xl_batch_two_with_a_negative_per_prompt():
    pipe = fv.make_i2vgen_xl()
    pipe._guidance_scale = 1.0  # its encode_prompt reads whether CFG is on from the running call's state
    prompts = pipe.encode_prompt(["a red car", "a blue cat"], torch.device("cpu"), 1)[0]
    negatives = pipe.encode_prompt(["dog", "dark blurry glasses"], torch.device("cpu"), 1)[0]
    g = torch.Generator().manual_seed(0)
    inputs = {
        "sample": torch.randn(2, 4, 3, 8, 8, generator=g),
        "timestep": torch.tensor(700),
        "encoder_hidden_states": prompts,
        "fps": torch.tensor([16, 16]),
        "image_latents": torch.randn(2, 4, 3, 8, 8, generator=g),
        "image_embeddings": torch.randn(2, 32, generator=g),
    }
    spatial = "*.attentions.*.attn2"  # the temporal attn2 attend over frames
    guided, expected, stock = _guided_and_reference(pipe.unet, "i2vgen-xl", negatives, inputs, "unet", spatial)
    assert relative_diff(guided, expected) <= 1e-5
    assert relative_diff(guided, stock) > 1e-3
