"""The guider door (``NormalizedAttentionGuidance``) in diffusers' modular pipelines (SDXL, FLUX.2-Klein base, Wan,
LTX), built on the tiny stock pipelines' very components: NAG through the guider equals NAG through the pipeline door on
the same weights, seed and steps (with and without CFG), differs from the unguided run, keeps to its window, and
saves its config. Flux.1: why the guider cannot act there."""

from __future__ import annotations

import pytest
import torch
from diffusers import ClassifierFreeGuidance, StableDiffusionXLAutoBlocks
from diffusers.modular_pipelines import Flux2KleinBaseAutoBlocks, FluxAutoBlocks, LTXAutoBlocks, WanBlocks

import nag_guidance as nag
from nag_guidance import NormalizedAttentionGuidance
from nag_guidance.testing import image, joint, video
from tests.integration.helpers import hook_snapshot, relative_diff

PROMPT, NEGATIVE, STEPS = "a red car", "blue", 4
NAG = {"nag_scale": 3.0, "nag_tau": 2.5, "nag_alpha": 0.5}


def _modular(blocks, stock):
    """A modular pipeline holding the stock pipeline's component objects."""
    pipe = blocks.init_pipeline()
    pipe.update_components(**{k: v for k, v in stock.components.items() if k in pipe.component_names and v is not None})
    return pipe


def _door(stock, call_kwargs, **nag_args) -> tuple[torch.Tensor, nag.NAGReport | None]:
    """The pipeline door's latents (and report) for the same prompt and seed; unguided without ``nag_args``."""
    nag.apply(stock)
    try:
        out = stock(prompt=PROMPT, generator=torch.Generator().manual_seed(0), **call_kwargs, **nag_args)
        return out[0], stock.nag_report
    finally:
        nag.remove(stock)


# -- SDXL ----------------------------------------------------------------------------------------


def _sdxl(pipe, guider) -> torch.Tensor:
    pipe.update_components(guider=guider)
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt=PROMPT, height=16, width=16, num_inference_steps=STEPS, generator=generator, output="latents")


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0], ids=["nag-only", "with-cfg"])
def test_sdxl_guider_equals_the_pipeline_door(guidance_scale):
    stock = image.make_sdxl()
    call = image.image_call_kwargs(num_inference_steps=STEPS, guidance_scale=guidance_scale)
    door, door_report = _door(stock, call, nag_negative_prompt=NEGATIVE, **NAG)
    unguided, _ = _door(stock, call)
    pipe = _modular(StableDiffusionXLAutoBlocks(), stock)
    before = hook_snapshot(stock.unet)

    guider = NormalizedAttentionGuidance(guidance_scale=guidance_scale, **NAG)
    assert guider.encode_negative(pipe, NEGATIVE).shape == (1, 77, 64)  # CLIP-L ‖ CLIP-G, as the UNet takes it
    forwards = []
    counter = stock.unet.register_forward_hook(lambda *_: forwards.append(1))
    guided = _sdxl(pipe, guider)
    counter.remove()
    assert len(forwards) == STEPS * (2 if guidance_scale > 1 else 1)  # one pass without CFG
    assert relative_diff(guided, door) < 1e-5
    assert relative_diff(guided, unguided) > 1e-3
    report = guider.report
    assert (report.family, report.layers_guided, report.steps_guided, report.steps_total) == ("sdxl", 8, STEPS, STEPS)
    assert report.mean_ratio == pytest.approx(door_report.mean_ratio, rel=1e-5)

    # between its passes the hooks are inert: diffusers' own CFG guider on the same unet is the stock run
    assert relative_diff(_sdxl(pipe, ClassifierFreeGuidance(guidance_scale=guidance_scale)), unguided) < 1e-5
    guider.remove()
    assert hook_snapshot(stock.unet) == before


def test_sdxl_windows():
    stock = image.make_sdxl()
    call = image.image_call_kwargs(num_inference_steps=STEPS, guidance_scale=5.0)
    door_late, door_late_report = _door(stock, call, nag_negative_prompt=NEGATIVE, nag_start=0.5, **NAG)
    door_full, _ = _door(stock, call, nag_negative_prompt=NEGATIVE, **NAG)
    unguided, _ = _door(stock, call)
    pipe = _modular(StableDiffusionXLAutoBlocks(), stock)
    before = hook_snapshot(stock.unet)

    late = NormalizedAttentionGuidance(guidance_scale=5.0, nag_start=0.5, **NAG)
    late.encode_negative(pipe, NEGATIVE)
    guided = _sdxl(pipe, late)
    assert relative_diff(guided, door_late) < 1e-5 and relative_diff(guided, door_full) > 1e-4
    assert 0 < late.report.steps_guided == door_late_report.steps_guided < STEPS  # the same schedule rule

    never = late.new(nag_start=0.9, nag_window="steps")  # steps at 0, 1/4, 2/4, 3/4 of the run: none in [0.9, 1)
    never.set_negative(late.encode_negative(pipe, NEGATIVE))
    assert relative_diff(_sdxl(pipe, never), unguided) < 1e-5
    assert not never.report.active and "no step fell in the window [0.9, 1] of 4 steps" in never.report.warnings

    cfg_late = NormalizedAttentionGuidance(guidance_scale=5.0, start=0.5, **NAG)  # CFG's own window
    cfg_late.encode_negative(pipe, NEGATIVE)
    forwards = []
    counter = stock.unet.register_forward_hook(lambda *_: forwards.append(1))
    _sdxl(pipe, cfg_late)
    counter.remove()
    assert len(forwards) == 1 + 1 + 2 + 2 and cfg_late.report.steps_guided == STEPS
    late.remove()  # the three guiders share the denoiser's hooks: the others still use them
    assert hook_snapshot(stock.unet) != before
    never.remove()
    cfg_late.remove()  # the last user's removal gives the denoiser back stock
    assert hook_snapshot(stock.unet) == before


# -- FLUX ----------------------------------------------------------------------------------------


def _as_door_latents(stock, latents: torch.Tensor) -> torch.Tensor:
    """The modular Klein pipeline's latents in the layout of the door's ``output_type="latent"``: batch-norm
    denormalised and unpatchified, as both do before decoding."""
    bn = stock.vae.bn
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + stock.vae.config.batch_norm_eps)
    return stock._unpatchify_latents(latents * std + bn.running_mean.view(1, -1, 1, 1))


def _flux2(pipe, guider) -> torch.Tensor:
    pipe.update_components(guider=guider)
    generator = torch.Generator().manual_seed(0)
    kwargs = {"height": 16, "width": 16, "num_inference_steps": STEPS, "max_sequence_length": 32}
    return pipe(prompt=PROMPT, generator=generator, output="latents", **kwargs)


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0], ids=["nag-only", "with-cfg"])
def test_flux2_klein_guider_equals_the_pipeline_door(guidance_scale):
    stock = joint.make_flux2_klein(is_distilled=False)  # the base model: real CFG against ""
    call = joint.flux2_klein_call_kwargs(num_inference_steps=STEPS, guidance_scale=guidance_scale)
    door, door_report = _door(stock, call, nag_negative_prompt=NEGATIVE, **NAG)
    unguided, _ = _door(stock, call)
    pipe = _modular(Flux2KleinBaseAutoBlocks(), stock)

    guider = NormalizedAttentionGuidance(guidance_scale=guidance_scale, **NAG)
    guider.encode_negative(pipe, NEGATIVE, max_sequence_length=32)
    guided = _as_door_latents(stock, _flux2(pipe, guider))
    assert relative_diff(guided, door) < 1e-5
    assert relative_diff(guided, unguided) > 1e-3
    report = guider.report
    assert (report.family, report.layers_guided, report.steps_guided) == ("flux2", 4, STEPS)
    assert report.mean_ratio == pytest.approx(door_report.mean_ratio, rel=1e-5)

    again = guider.new()  # a second guider on the same transformer reuses the installed hooks (never nests them)
    again.encode_negative(pipe, NEGATIVE, max_sequence_length=32)
    assert torch.equal(_as_door_latents(stock, _flux2(pipe, again)), guided)
    again.remove()


def test_flux1_modular_pipeline_never_consults_a_guider():
    """Why Flux.1 has no guider test: diffusers' Flux.1 modular blocks call the transformer once per step with the
    prompt and have no guider component at all (a guider set on the pipeline would never be called). If this fails,
    diffusers added one: add Flux.1 to ``DENOISER_FAMILIES`` and to these tests."""
    assert "guider" not in FluxAutoBlocks().init_pipeline().component_names


# -- Wan, LTX ------------------------------------------------------------------------------------


def test_wan_guider_equals_the_pipeline_door():
    """With CFG only: diffusers' Wan text-encoder block fails with any one-pass guider (its ``encode_prompt``
    returns a negative it never assigned), ``ClassifierFreeGuidance(guidance_scale=1)`` included."""
    stock = video.make_wan_t2v()
    call = video.wan_call_kwargs(num_inference_steps=STEPS, guidance_scale=3.0)
    door, door_report = _door(stock, call, nag_negative_prompt=NEGATIVE, **NAG)
    unguided, _ = _door(stock, call)
    blocks = WanBlocks()
    blocks.sub_blocks.pop("decode")
    pipe = _modular(blocks, stock)

    guider = NormalizedAttentionGuidance(guidance_scale=3.0, **NAG)
    guider.encode_negative(pipe, NEGATIVE)
    pipe.update_components(guider=guider)
    generator = torch.Generator().manual_seed(0)
    kwargs = {"height": 32, "width": 32, "num_frames": 5, "num_inference_steps": STEPS}
    guided = pipe(prompt=PROMPT, generator=generator, output="latents", **kwargs)
    assert relative_diff(guided, door) < 1e-5
    assert relative_diff(guided, unguided) > 1e-3
    report = guider.report
    assert (report.family, report.layers_guided, report.steps_guided) == ("wan", 2, STEPS)
    assert report.mean_ratio == pytest.approx(door_report.mean_ratio, rel=1e-5)
    guider.remove()


def test_ltx_guider_equals_the_pipeline_door():
    """Modular LTX runs each pass inside ``transformer.cache_context("pred_cond")`` / ``("pred_uncond")``: the
    conditional one is guided like the stock pipeline's."""
    stock = video.make_ltx()
    call = video.ltx_call_kwargs(num_inference_steps=2, guidance_scale=3.0)
    door, door_report = _door(stock, call, nag_negative_prompt=NEGATIVE, **NAG)
    unguided, _ = _door(stock, call)
    blocks = LTXAutoBlocks()
    blocks.sub_blocks.pop("decode")  # the tiny video VAE takes seconds; the latents are enough
    pipe = _modular(blocks, stock)
    guider = NormalizedAttentionGuidance(family="ltx", guidance_scale=3.0, **NAG)
    guider.encode_negative(pipe, NEGATIVE, max_sequence_length=16)
    pipe.update_components(guider=guider)
    generator = torch.Generator().manual_seed(0)
    kwargs = {"height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 2, "max_sequence_length": 16}
    guided = pipe(prompt=PROMPT, generator=generator, output="latents", **kwargs)
    packed = stock._pack_latents(guided, stock.transformer_spatial_patch_size, stock.transformer_temporal_patch_size)
    guided = packed  # the stock pipeline returns packed latents (tokens × channels)
    assert guider.report.active and guider.report.steps_guided == 2
    assert relative_diff(guided, door) < 1e-5
    assert relative_diff(guided, unguided) > 1e-3
    assert guider.report.mean_ratio == pytest.approx(door_report.mean_ratio, rel=1e-5)
    guider.remove()


# -- config and refusals -------------------------------------------------------------------------


def _public(config) -> dict:
    """A config without diffusers' bookkeeping keys (``_class_name``, ``_use_default_values``...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def test_config_round_trip(tmp_path):
    guider = NormalizedAttentionGuidance(
        nag_scale=3.0,
        nag_tau=2.0,
        nag_alpha=0.5,
        nag_start=0.25,
        nag_stop=0.75,
        nag_window="steps",
        guidance_scale=5.0,
        guidance_rescale=0.7,
        family="sdxl",
        start=0.1,
        stop=0.9,
    )
    guider.save_pretrained(tmp_path)
    assert (tmp_path / "guider_config.json").is_file()
    loaded = NormalizedAttentionGuidance.from_pretrained(tmp_path)
    assert _public(loaded.config) == _public(guider.config) and len(_public(guider.config)) == 12
    config = nag.NAGConfig(scale=3.0, tau=2.0, alpha=0.5, start=0.25, end=0.75, window="steps")
    assert loaded.nag == guider.nag == config
    assert (loaded.guidance_scale, loaded.guidance_rescale, loaded.family) == (5.0, 0.7, "sdxl")
    assert (loaded._start, loaded._stop) == (0.1, 0.9)
    assert guider.new(nag_scale=4.0).nag.scale == 4.0


def test_refusals():
    with pytest.raises(ValueError, match="scale=0.5 is out of range"):
        NormalizedAttentionGuidance(nag_scale=0.5)
    for family in ("fluxx", "ltx2"):  # unknown; needs its pipeline (the LTX-2 text connectors)
        with pytest.raises(ValueError, match=f"family='{family}' cannot be guided on a bare denoiser"):
            NormalizedAttentionGuidance(family=family)
    guider = NormalizedAttentionGuidance()
    guider.set_state(step=0, num_inference_steps=STEPS, timestep=torch.tensor(999))
    with pytest.raises(RuntimeError, match="no NAG negative"):
        guider.prepare_models(torch.nn.Linear(2, 2))
    guider.set_negative(torch.zeros(1, 3, 2))
    guider.set_state(step=0, num_inference_steps=STEPS, timestep=torch.tensor(999))
    with pytest.raises(ValueError, match="no NAG family known for a Linear: pass family="):
        guider.prepare_models(torch.nn.Linear(2, 2))


NAN, INF = float("nan"), float("inf")
BAD_CFG = [
    *(pytest.param({"guidance_scale": v}, ValueError, f"guidance_scale={v}", id=f"guidance_scale={v}")
      for v in (NAN, INF, -1.0)),
    *(pytest.param({"guidance_rescale": v}, ValueError, f"guidance_rescale={v}", id=f"guidance_rescale={v}")
      for v in (NAN, 5.0, -0.5)),
    pytest.param({"guidance_scale": "5"}, ValueError, "expected a real number", id="guidance_scale as text"),
    pytest.param({"guidance_rescale": True}, ValueError, "expected a real number", id="guidance_rescale=True"),
    pytest.param({"base": "not a guider"}, TypeError, "base='not a guider'", id="base as text"),
    pytest.param({"base": ClassifierFreeGuidance}, TypeError, "base=", id="base as a class"),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "error", "message"), BAD_CFG)
def test_cfg_parameters_are_checked(arguments, error, message):
    with pytest.raises(error, match=message):
        NormalizedAttentionGuidance(**arguments)
    with pytest.raises(error, match=message):
        NormalizedAttentionGuidance().new(**arguments)


@pytest.mark.parametrize("name", ["guidance_scale", "guidance_rescale", "nag_scale", "nag_tau", "start"])
def test_a_nan_in_a_saved_config_is_refused(tmp_path, name):
    import json

    NormalizedAttentionGuidance(guidance_scale=5.0).save_pretrained(tmp_path)
    path = tmp_path / "guider_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), name: NAN}))  # json writes NaN, and reads it
    with pytest.raises(ValueError, match="nan"):
        NormalizedAttentionGuidance.from_pretrained(tmp_path)


@pytest.mark.parametrize("pipe", [object(), image.make_sd()], ids=["an object", "a StableDiffusionPipeline"])
def test_encode_negative_needs_a_modular_pipeline(pipe):
    with pytest.raises(ValueError, match="no 'text_encoder' block: use set_negative"):
        NormalizedAttentionGuidance().encode_negative(pipe, NEGATIVE)
