"""Z-Image (Turbo): one single-stream transformer over [image; caption], fed with per-sample lists.

The caption takes a path of its own before the main layers — padded to a multiple of 32 with a learned pad
token, position ids (1 + l, 0, 0), a "context refiner" in which caption tokens attend to each other — and the
image's position ids start after the padded caption. So the negative cannot simply ride on the caption list:
its caption is refined separately with the model's own modules (it does not depend on the timestep, so once
per call), and appended to the unified sequence of the main layers, where the guided attention sees
[image | prompt caption | negative caption]. The image keeps the prompt's positions: the queries are the
prompt branch's, as NAG wants. The pipeline batches CFG as [cond, uncond]. Omni (image-conditioned) mode is
left unguided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nag_guidance.integration import denoiser_hooks
from nag_guidance.integration.denoiser_hooks import bind_forward
from nag_guidance.integration.family import Family, JointLayout, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState, NegativeText


@dataclass
class _Caption:
    """The negative caption of every guided row through the model's caption path (a forward's ``plan.family``)."""

    features: torch.Tensor
    freqs: torch.Tensor
    mask: torch.Tensor


@dataclass
class _Call:
    """Per call (``call.family``): the refined negative captions, by (first row, end row, batch)."""

    captions: dict[tuple[int, int, int], _Caption] = field(default_factory=dict)


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    original = model._build_unified_sequence

    def build_unified_sequence(*args: Any, **kwargs: Any):
        unified, freqs, mask, noise = original(*args, **kwargs)
        plan = state.forward
        if plan is None or plan.family is None:
            return unified, freqs, mask, noise
        return (*_append_caption(plan, unified, freqs, mask, kwargs.get("x_seqlens") or args[2]), noise)

    model._build_unified_sequence = build_unified_sequence

    def undo_build() -> None:
        del model._build_unified_sequence

    return [undo_build]


def _plan_forward(family: Family, state: NAGState):
    """Denoiser pre-hook: plan the forward and prepare the refined negative caption; inputs stay as they are."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        call = state.call
        if call is None:
            return
        arguments = bind_forward(module, args, kwargs).arguments
        images, captions = arguments["x"], arguments["cap_feats"]
        if isinstance(images[0], list):
            call.note("Z-Image omni (image-conditioned) mode is not guided")
            return
        plan = state.plan_forward(len(images), captions, arguments["t"])
        denoiser_hooks.refuse_shared_attention_cache(module, state)
        if plan is None:
            return
        if call.family is None:
            call.family = _Call()
        key = (plan.rows.start, plan.rows.stop, plan.batch)
        if key not in call.family.captions:
            call.family.captions[key] = _refined_negative(module, call.negative, plan, captions[0])
        plan.family = call.family.captions[key]

    return pre_forward


def _refined_negative(
    model: torch.nn.Module, negative: NegativeText, plan: ForwardPlan, like: torch.Tensor
) -> _Caption:
    """The negative caption of every guided row through the model's caption path."""
    embeds = list(negative.embeds)
    count = plan.rows.stop - plan.rows.start
    if count % len(embeds):
        raise ValueError(f"the NAG negative has {len(embeds)} rows, which does not divide the {count} prompt rows")
    rows = [embeds[i * len(embeds) // count].to(like) for i in range(count)]
    device = like.device
    padded, positions, pads = [], [], []
    for feat in rows:
        length = len(feat) + (-len(feat)) % 32
        out, ids, pad, _, _ = model._pad_with_ids(feat, (length, 1, 1), (1, 0, 0), device)
        padded.append(out)
        positions.append(ids)
        pads.append(pad)
    lengths = [len(p) for p in padded]
    features = model.cap_embedder(torch.cat(padded, dim=0))
    features, freqs, mask, _, _ = model._prepare_sequence(
        list(features.split(lengths, dim=0)), positions, pads, model.cap_pad_token, None, device
    )
    for layer in model.context_refiner:
        features = layer(features, mask, freqs)
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=device)
    return _Caption(features, freqs, mask)


def _append_caption(plan: ForwardPlan, unified, freqs, mask, image_lengths: list[int]):
    """Put the negative caption after the unified [image; caption] sequence of every row (zeros, masked, on the
    rows that are not guided), and tell the guided attention where each segment is."""
    caption: _Caption = plan.family
    batch, total = unified.shape[:2]
    rows, length = plan.rows, caption.features.shape[1]
    extra = unified.new_zeros(batch, length, unified.shape[2])
    extra[rows] = caption.features.to(unified.dtype)
    extra_freqs = freqs.new_zeros(batch, length, *freqs.shape[2:])
    extra_freqs[rows] = caption.freqs.to(freqs.dtype)
    extra_mask = torch.zeros(batch, length, dtype=torch.bool, device=unified.device)
    extra_mask[rows] = caption.mask.bool()
    full_mask = torch.ones(batch, total, dtype=torch.bool, device=unified.device) if mask is None else mask.bool()
    images = image_lengths[0]
    plan.text_length, plan.negative_length = total - images, length
    plan.text_key_masks = (full_mask[:, images:], extra_mask)
    return (
        torch.cat([unified, extra], dim=1),
        torch.cat([freqs, extra_freqs], dim=1),
        torch.cat([full_mask, extra_mask], dim=1),
    )


Z_IMAGE = Family(
    name="z-image",
    denoiser_classes=("ZImageTransformer2DModel",),
    timestep_units="reversed_fraction",
    text_width=("cap_feat_dim",),
    pipelines=("ZImagePipeline", "ZImageImg2ImgPipeline"),
    mechanism="joint",
    module_hooks=module_hooks,
    preset="generic",
    encode_returns=("embeds", "uncond"),
    text_arg="cap_feats",
    mask_arg=None,
    timestep_arg="t",
    attention=("layers.*.attention",),
    cfg_cond_first=True,
    layout=JointLayout("dispatch", text_first=False),
    pre_forward=_plan_forward,
)
