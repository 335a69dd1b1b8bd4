"""nag.apply / remove / applied: detection, bad input, failure recovery, idempotence, negatives as embeddings."""

from __future__ import annotations

import pytest
import torch

import nag_guidance as nag
from tests.integration.cases import BY_ID
from tests.integration.helpers import ForwardRecorder, generate, hook_snapshot

CASE = BY_ID["sd15"]
NEGATIVE = "blurry dog"


@pytest.fixture
def pipe():
    return CASE.make()


def test_unsupported_pipeline_is_refused_untouched():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    cls, before = type(pipe), hook_snapshot(unet)
    with pytest.raises(NotImplementedError, match=r"DDPMPipeline: its denoiser \(UNet2DModel\).*UNet2DConditionModel"):
        nag.apply(pipe)
    assert type(pipe) is cls and hook_snapshot(unet) == before and not nag.is_applied(pipe)


@pytest.mark.parametrize(
    "bad",
    [
        {"nag_scale": 0.5},
        {"nag_tau": 0.0},
        {"nag_alpha": 1.5},
        {"nag_start": 0.6, "nag_end": 0.5},
        {"nag_scale": "5"},
        {"nag_negative_prompt": ["a", "b", "c"]},  # three negatives for one prompt
        {"nag_negative_prompt": []},
        {"nag_negative_prompt": "x", "nag_negative_prompt_embeds": torch.zeros(1, 77, 32)},
        {"nag_negative_prompt_embeds": torch.zeros(77, 32)},
        {
            "nag_negative_prompt_embeds": torch.zeros(1, 77, 32),
            "nag_negative_prompt_attention_mask": torch.ones(2),
        },
    ],
)
def test_invalid_arguments_fail_before_any_compute(pipe, bad):
    nag.apply(pipe)
    calls = ForwardRecorder([pipe.unet, pipe.text_encoder])
    arguments = {"nag_negative_prompt": NEGATIVE, **bad}
    if "nag_negative_prompt_embeds" in bad and "nag_negative_prompt" not in bad:
        arguments.pop("nag_negative_prompt")
    with pytest.raises(ValueError):
        generate(pipe, CASE, nag=arguments)
    calls.close()
    assert calls.outputs == []


def test_invalid_apply_defaults_leave_pipeline_untouched(pipe):
    cls = type(pipe)
    with pytest.raises(ValueError, match="alpha"):
        nag.apply(pipe, alpha=2.0)
    with pytest.raises(ValueError, match="unknown preset"):
        nag.apply(pipe, preset="nope")
    with pytest.raises(TypeError, match="unknown NAG parameter"):
        nag.apply(pipe, sigma=1.0)
    assert type(pipe) is cls and not nag.is_applied(pipe)


def test_exception_mid_call_leaves_nothing_behind(pipe):
    stock = generate(pipe, CASE)
    nag.apply(pipe)

    def explode(pipeline, step, timestep, callback_kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(pipe, CASE, nag={"nag_negative_prompt": NEGATIVE}, callback_on_step_end=explode)
    session = pipe._nag_session
    assert not session.handle.active and session.call is None
    assert all(state.call is None and state.forward is None for state in session.handle.states)
    assert (generate(pipe, CASE) - stock).abs().max().item() <= 1e-6
    generate(pipe, CASE, nag={"nag_negative_prompt": NEGATIVE})
    assert pipe.nag_report.active


def test_apply_twice_installs_once_and_remove_without_apply_is_a_noop(pipe):
    before = hook_snapshot(pipe.unet)
    nag.remove(pipe)
    assert hook_snapshot(pipe.unet) == before
    nag.apply(pipe)
    once = hook_snapshot(pipe.unet)
    nag.apply(pipe, scale=7.0)
    assert hook_snapshot(pipe.unet) == once
    generate(pipe, CASE, nag={"nag_negative_prompt": NEGATIVE})
    assert pipe.nag_report.config.scale == 7.0
    nag.remove(pipe)
    nag.remove(pipe)
    assert hook_snapshot(pipe.unet) == before


def test_defaults_come_from_the_family_preset_then_apply_then_call(pipe):
    nag.apply(pipe)
    generate(pipe, CASE, nag={"nag_negative_prompt": NEGATIVE})
    preset = nag.get_preset("sd15").config
    assert pipe.nag_report.config == preset
    nag.apply(pipe, preset="sdxl", tau=4.0)
    generate(pipe, CASE, nag={"nag_negative_prompt": NEGATIVE, "nag_alpha": 0.1})
    config = pipe.nag_report.config
    assert (config.scale, config.tau, config.alpha) == (nag.get_preset("sdxl").config.scale, 4.0, 0.1)


def test_context_manager(pipe):
    cls = type(pipe)
    with nag.applied(pipe, scale=3.0) as applied:
        generate(applied, CASE, nag={"nag_negative_prompt": NEGATIVE})
        assert applied.nag_report.active and applied.nag_report.config.scale == 3.0
    assert type(pipe) is cls and not nag.is_applied(pipe)


def test_negative_as_embeddings_equals_negative_as_text(pipe):
    nag.apply(pipe)
    from_text = generate(pipe, CASE, nag={"nag_negative_prompt": NEGATIVE})
    embeds = pipe.encode_prompt(NEGATIVE, torch.device("cpu"), 1, False)[0]
    from_embeds = generate(pipe, CASE, nag={"nag_negative_prompt_embeds": embeds})
    assert pipe.nag_report.active
    assert (from_text - from_embeds).abs().max().item() <= 1e-6


def test_attention_backend_setting_reaches_the_wrapped_processor(pipe):
    nag.apply(pipe)
    attn = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    wrapper = attn.processor
    wrapper._attention_backend = "native"
    assert wrapper.processor._attention_backend == "native"
    nag.remove(pipe)
    assert attn.processor is wrapper.processor


def test_save_pretrained_keeps_the_stock_class_name(pipe, tmp_path):
    nag.apply(pipe)
    pipe.save_pretrained(tmp_path)
    assert '"_class_name": "StableDiffusionPipeline"' in (tmp_path / "model_index.json").read_text()
