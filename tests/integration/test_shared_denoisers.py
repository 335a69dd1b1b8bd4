"""Pipelines that share a denoiser: diffusers' ``from_pipe``, ``Pipeline(**pipe.components)``, the SDXL base +
refiner pattern. NAG's hooks belong to the denoiser and each forward is guided only by the call that armed it."""

from __future__ import annotations

import copy
import gc
import threading
import weakref

import pytest
import torch
from diffusers import StableDiffusionPipeline

import nag_guidance as nag
from nag_guidance.integration.denoiser_hooks import HOOKS_ATTRIBUTE
from nag_guidance.testing import image as fi

from .helpers import ForwardRecorder, relative_diff

NAG = {"nag_negative_prompt": "blue", "nag_scale": 4.0, "nag_tau": 2.5, "nag_alpha": 0.5}
CALL = fi.image_call_kwargs()


def run(pipe, nag_args: dict | None = None, **call) -> torch.Tensor:
    out = pipe("a red car", generator=torch.Generator().manual_seed(0), **{**CALL, **call}, **(nag_args or {}))
    return out[0]


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    """What one pipeline on its own computes: stock, and guided."""
    stock = run(fi.make_sd())
    guided = run(nag.apply(fi.make_sd()), NAG)
    assert relative_diff(guided, stock) > 1e-3
    return {"stock": stock, "guided": guided}


def processors(unet) -> dict:
    return dict(unet.attn_processors)


@pytest.mark.parametrize("share", ["from_pipe", "components"])
def test_two_applied_pipelines_over_one_denoiser_guide_and_remove_in_any_order(expected, share):
    first = fi.make_sd()
    stock_processors = processors(first.unet)
    nag.apply(first)
    second = StableDiffusionPipeline.from_pipe(first) if share == "from_pipe" else type(first)(**first.components)
    nag.apply(second)  # was: "already has NAG installed"
    assert second.unet is first.unet
    assert torch.equal(run(second, NAG), expected["guided"])
    assert torch.equal(run(first, NAG), expected["guided"])
    assert torch.equal(run(second), expected["stock"])  # no negative: the stock call
    nag.remove(first)
    assert torch.equal(run(second, NAG), expected["guided"])  # the other still guides
    assert torch.equal(run(first), expected["stock"])
    nag.remove(second)
    assert processors(first.unet) == stock_processors  # the last remove gives the denoiser back stock
    assert HOOKS_ATTRIBUTE not in first.unet.__dict__
    assert not first.unet._forward_pre_hooks and not first.unet._forward_hooks


def test_a_stock_pipeline_sharing_the_denoiser_stays_stock_inside_the_others_callback(expected):
    applied = nag.apply(fi.make_sd())
    # not applied; a scheduler of its own (a scheduler holds the running loop's state, NAG or not)
    stock = StableDiffusionPipeline.from_pipe(applied, scheduler=copy.deepcopy(applied.scheduler))
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(run(stock))
        return kwargs

    guided = run(applied, NAG, callback_on_step_end=callback)
    assert torch.equal(guided, expected["guided"])  # the nested call did not disturb it
    assert len(seen) == CALL["num_inference_steps"]
    assert all(torch.equal(out, expected["stock"]) for out in seen)


def test_a_stock_pipeline_sharing_the_denoiser_stays_stock_from_another_thread(expected):
    applied = nag.apply(fi.make_sd())
    stock = StableDiffusionPipeline.from_pipe(applied, scheduler=copy.deepcopy(applied.scheduler))
    inside, done = threading.Event(), threading.Event()
    results: dict[str, torch.Tensor] = {}

    def callback(pipe, step, timestep, kwargs):
        if step == 0:
            inside.set()  # the applied call is armed: let the other thread run now
            assert done.wait(120)
        return kwargs

    def other() -> None:
        assert inside.wait(120)
        results["stock"] = run(stock)
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    results["guided"] = run(applied, NAG, callback_on_step_end=callback)
    thread.join(120)
    assert torch.equal(results["stock"], expected["stock"])
    assert torch.equal(results["guided"], expected["guided"])


def test_a_dropped_applied_pipeline_is_not_kept_alive_and_frees_the_denoiser():
    pipe = nag.apply(fi.make_sd())
    unet = pipe.unet
    stock_classes = {name: type(p) for name, p in processors(fi.make_sd().unet).items()}
    alive = weakref.ref(pipe)
    del pipe
    gc.collect()
    assert alive() is None
    assert {name: type(p) for name, p in processors(unet).items()} == stock_classes
    assert HOOKS_ATTRIBUTE not in unet.__dict__


def test_a_step_callback_cannot_remove_nag_and_the_call_is_not_lost(expected):
    pipe = nag.apply(fi.make_sd())
    refused = []

    def callback(p, step, timestep, kwargs):
        with pytest.raises(RuntimeError, match="running a call"):
            nag.remove(p)
        refused.append(step)
        return kwargs

    assert torch.equal(run(pipe, NAG, callback_on_step_end=callback), expected["guided"])
    assert refused and nag.is_applied(pipe) and pipe.nag_report.active
    nag.remove(pipe)
    assert not nag.is_applied(pipe)


def test_sdxl_base_and_refiner_over_shared_components_both_guided():
    base = fi.make_sdxl()
    refiner = fi.make_sdxl_refiner(base)
    nag.apply(base)
    nag.apply(refiner)  # was refused: the refiner's tokenizer is None, it encodes with tokenizer_2
    generator = torch.Generator().manual_seed(0)
    kwargs = dict(height=16, width=16, num_inference_steps=4, guidance_scale=1.0)
    latents = base("a red car", denoising_end=0.5, output_type="latent", generator=generator, **kwargs, **NAG)[0]
    assert base.nag_report.active
    predictions = ForwardRecorder([refiner.unet])
    refiner("a red car", image=latents, denoising_start=0.5, output_type="latent", **kwargs, **NAG)
    assert refiner.nag_report.active and refiner.nag_report.steps_guided == 2
    refiner("a red car", image=latents, denoising_start=0.5, output_type="latent", **kwargs)
    predictions.close()
    guided, stock = predictions.outputs[:2], predictions.outputs[2:]
    assert len(guided) == len(stock) == 2
    # the base hands over latents at high noise (|x| ~ 600), which dominate the tiny refiner's prediction: NAG's
    # share is small there, yet far above float32 noise (~1e-7)
    assert all(relative_diff(g, s) > 1e-5 for g, s in zip(guided, stock, strict=True))
    nag.remove(refiner)
    nag.remove(base)
    assert HOOKS_ATTRIBUTE not in base.unet.__dict__ and HOOKS_ATTRIBUTE not in refiner.unet.__dict__
