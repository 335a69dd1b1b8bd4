"""The denoiser door (``nag.attach``): NAG on a bare transformer inside a hand-written sampling loop equals the
pipeline door on the same weights and seed; the handle's lifecycle; ``nag.defaults`` and ``nag.applied``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

import nag_guidance as nag
from nag_guidance.integration.state import NegativeText
from nag_guidance.testing import joint as fj
from tests.integration.cases import BY_ID as CROSS
from tests.integration.helpers import generate, hook_snapshot, relative_diff

PROMPT, NEGATIVE, STEPS = "a red car", "blue", 4
CONFIG = nag.NAGConfig(scale=5.0, tau=2.5, alpha=0.5)


def _euler_loop(pipe, handle: nag.NAGHandle | None) -> torch.Tensor:
    """FLUX.1-schnell sampling written out: encode, noise, 4 Euler steps of the flow on the shifted schedule."""
    device = torch.device("cpu")
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, prompt_2=None, device=device, max_sequence_length=16)
    negative = pipe.encode_prompt(NEGATIVE, prompt_2=None, device=device, max_sequence_length=16)[0]
    channels = pipe.transformer.config.in_channels // 4
    generator = torch.Generator().manual_seed(0)
    latents, image_ids = pipe.prepare_latents(1, channels, 16, 16, embeds.dtype, device, generator)
    config = pipe.scheduler.config
    mu = calculate_shift(
        latents.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    sigmas = pipe.scheduler.sigmas
    if handle is not None:
        handle.begin(negative, config=CONFIG, num_steps=STEPS)
    for i, t in enumerate(pipe.scheduler.timesteps):
        velocity = pipe.transformer(
            hidden_states=latents,
            timestep=t.expand(1) / 1000,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        latents = (latents.float() + (sigmas[i + 1] - sigmas[i]) * velocity.float()).to(latents.dtype)
    return latents


def _pipeline_latents(pipe, **nag_args) -> torch.Tensor:
    kwargs = fj.flux_call_kwargs(num_inference_steps=STEPS, guidance_scale=0.0)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs, **nag_args)[0]


def test_hand_written_loop_with_attach_equals_the_pipeline_door():
    pipe = fj.make_flux(guidance_embeds=False)
    stock_loop = _euler_loop(pipe, None)
    assert relative_diff(stock_loop, _pipeline_latents(pipe)) < 1e-5  # the loop is the pipeline's loop

    before = hook_snapshot(pipe.transformer)
    handle = nag.attach(pipe.transformer, family="flux")
    guided_loop = _euler_loop(pipe, handle)
    report = handle.end()
    handle.remove()
    assert hook_snapshot(pipe.transformer) == before
    assert report.active and report.steps_guided == STEPS and report.layers_guided == 4

    nag.apply(pipe)
    door = _pipeline_latents(pipe, nag_negative_prompt=NEGATIVE, **{f"nag_{k}": v for k, v in CONFIG.as_dict().items()})
    assert relative_diff(guided_loop, door) < 1e-5
    assert relative_diff(guided_loop, stock_loop) > 1e-3


def test_handle_lifecycle_and_repr():
    pipe = fj.make_flux(guidance_embeds=False)
    handle = nag.attach(pipe.transformer, family="flux")
    assert repr(handle).startswith("NAGHandle(family='flux', idle, layers=[transformer.transformer_blocks.0.attn")
    assert repr(handle).endswith("transformer.single_transformer_blocks.1.attn])")  # all 4 layers
    with pytest.raises(RuntimeError, match="not active"):
        handle.end()
    handle.begin(torch.zeros(1, 3, pipe.transformer.config.joint_attention_dim))
    assert "active" in repr(handle)
    with pytest.raises(RuntimeError, match="already active"):
        handle.begin(torch.zeros(1, 3, 8))
    assert not handle.end().active  # begun, never run: says so
    handle.remove()
    handle.remove()  # idempotent
    assert "removed" in repr(handle)


def test_attach_refuses_what_it_cannot_do():
    pipe = fj.make_flux(guidance_embeds=False)
    with pytest.raises(ValueError, match="unknown family 'fluxx'"):
        nag.attach(pipe.transformer, family="fluxx")
    with pytest.raises(ValueError, match="needs its pipeline"):
        nag.attach(pipe.transformer, family="ltx2")
    with pytest.raises(TypeError, match="takes the denoiser module"):
        nag.attach(pipe, family="flux")


def test_defaults_and_applied_restore_the_previous_defaults():
    pipe = CROSS["sd15"].make()
    with pytest.raises(ValueError, match="not applied"):
        nag.defaults(pipe)
    nag.apply(pipe, scale=3)
    assert nag.defaults(pipe).scale == 3
    with nag.applied(pipe, scale=9):
        assert nag.defaults(pipe).scale == 9
        generate(pipe, CROSS["sd15"], nag={"nag_negative_prompt": NEGATIVE})
        assert pipe.nag_report.config.scale == 9
    assert nag.is_applied(pipe) and nag.defaults(pipe).scale == 3


def test_handles_over_one_denoiser_share_its_hooks_and_another_family_is_refused():
    """A second attach (or an apply) on a hooked denoiser joins its hooks instead of nesting them; guiding it as
    another family at the same time is refused, with nothing half-installed; the last removal gives it back stock."""
    pipe = fj.make_flux(guidance_embeds=False)
    stock = hook_snapshot(pipe.transformer)
    first = nag.attach(pipe.transformer, family="flux")
    hooked = hook_snapshot(pipe.transformer)
    second = nag.attach(pipe.transformer, family="flux")
    nag.apply(pipe)
    assert hook_snapshot(pipe.transformer) == hooked
    with pytest.raises(ValueError, match="already has NAG installed for the flux family"):
        nag.attach(pipe.transformer, family="flux-kontext")
    assert hook_snapshot(pipe.transformer) == hooked
    first.remove()
    nag.remove(pipe)
    assert hook_snapshot(pipe.transformer) == hooked  # the second handle still uses them
    second.remove()
    assert hook_snapshot(pipe.transformer) == stock


@pytest.mark.parametrize(
    ("degrees", "pooled", "refused"),
    [
        ({"ring_degree": 2}, None, "with ring attention"),
        ({"ulysses_degree": 2}, "negative", "with pooled='negative'"),
        ({"ulysses_degree": 2}, None, None),
    ],
    ids=["ring", "ulysses-pooled-negative", "ulysses"],
)
def test_begin_refuses_what_nag_cannot_follow_under_context_parallelism(degrees, pooled, refused):
    """What ``enable_parallelism`` leaves on the model (its ``_parallel_config``) is enough to decide, before any
    compute: the two-rank runs are in tests/compat/test_context_parallel.py."""
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    pipe = fj.make_flux(guidance_embeds=False)
    handle = nag.attach(pipe.transformer, family="flux")
    pipe.transformer._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(**degrees))
    width = pipe.transformer.config.joint_attention_dim
    negative = NegativeText(torch.zeros(1, 3, width), pooled=torch.zeros(1, 768) if pooled else None)
    config = nag.NAGConfig(pooled=pooled)
    if refused is None:
        handle.begin(negative, config=config)
        assert handle.active
        return
    with pytest.raises(ValueError, match=f"context parallelism .*{refused}.*: NAG cannot guide it"):
        handle.begin(negative, config=config)
    assert not handle.active
