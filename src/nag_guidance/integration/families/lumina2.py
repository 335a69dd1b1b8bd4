"""Lumina 2: a context refiner (caption tokens only, masked), a noise refiner (image only), then single-stream
``layers`` over one joint sequence per row, [its real caption tokens | image | padding to the batch's longest].

The model keeps only the caption's real tokens (from the mask, assuming right padding) and gives them RoPE positions
0…c−1 on the first axis, the image c on that axis: so the negative cannot ride on the prompt's caption. Its caption
takes the model's own caption path alone (embedder, then the context refiner with its own mask and positions; neither
depends on the timestep, so once per call), and is put into the sequence of the main layers: a hook before the first
layer lays every row out as [prompt caption | negative caption | image] (the prompt's padding moved into its caption
segment and masked, the guided attention getting both captions' masks), and a hook after the last one puts the
stock layout back. The image keeps the prompt's positions (its queries are the prompt branch's); the negative's
tokens get first-axis positions shifted by c − n (n: the negative's real length), so that, RoPE depending on
relative positions only, they see each other and the image exactly as they would alone. The pipeline runs CFG as
a second call without a cache context, recognised by its text (the pipeline's own negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nag_guidance.integration import denoiser_hooks
from nag_guidance.integration.denoiser_hooks import bind_forward, unbind
from nag_guidance.integration.family import Family, JointLayout, Undo
from nag_guidance.integration.state import NAGState, NegativeText


@dataclass
class _Call:
    """Per call (``call.family``): the refined negative captions, by (first row, end row, device, dtype)."""

    captions: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class _Layout:
    """The main layers' layout [prompt caption | negative caption | image], built before the first layer."""

    order: torch.Tensor  # where each token, the negative's left out, comes from in the stock layout
    mask: torch.Tensor
    rotary: torch.Tensor


@dataclass
class _Forward:
    """Per guided forward (``plan.family``)."""

    captions: torch.Tensor  # the prompt's real caption lengths, as the model takes them
    images: int  # the number of image tokens
    negative: NegativeText
    layout: _Layout | None = None


def _layout(state: NAGState) -> _Layout | None:
    """The current forward's new layout, once the first layer's hook has built it."""
    plan = state.forward
    return None if plan is None or plan.family is None else plan.family.layout


def module_hooks(model: torch.nn.Module, state: NAGState) -> list[Undo]:
    layers = model.layers
    handles = [layers[0].register_forward_pre_hook(_enter(model, state), with_kwargs=True)]
    handles += [layer.register_forward_pre_hook(_follow(state), with_kwargs=True) for layer in layers[1:]]
    handles.append(layers[-1].register_forward_hook(_leave(state)))
    return [handle.remove for handle in handles]


def _plan_forward(family: Family, state: NAGState):
    """Denoiser pre-hook: plan the forward and keep what the layer hooks need; the inputs stay as they are."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        call = state.call
        if call is None:
            return
        arguments = bind_forward(module, args, kwargs).arguments
        text = arguments["encoder_hidden_states"]
        plan = state.plan_forward(text.shape[0], text, arguments["timestep"])
        denoiser_hooks.refuse_shared_attention_cache(module, state)
        if plan is None:
            return
        height, width = arguments["hidden_states"].shape[-2:]
        patch = module.config.patch_size
        plan.family = _Forward(
            captions=arguments["encoder_attention_mask"].sum(dim=1),
            images=(height // patch) * (width // patch),
            negative=state.negative_rows(plan.rows.stop - plan.rows.start, device=text.device, dtype=text.dtype),
        )

    return pre_forward


def _enter(model: torch.nn.Module, state: NAGState):
    """Before the first main layer: [caption | image | padding] -> [prompt caption | negative caption | image]."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        plan = state.forward
        if plan is None or plan.family is None:
            return None
        info: _Forward = plan.family
        bound = bind_forward(module, args, kwargs)
        arguments = bound.arguments
        hidden, rotary = arguments["hidden_states"], arguments["image_rotary_emb"]
        batch, total, channels = hidden.shape
        device, images = hidden.device, info.images
        captions = info.captions.to(device)
        longest = total - images
        call = state.call
        if call.family is None:
            call.family = _Call()
        key = (plan.rows.start, plan.rows.stop, device, hidden.dtype)
        if key not in call.family.captions:
            call.family.captions[key] = _refined_negative(model, info.negative, hidden)
        features, negative_mask, negative_lengths = call.family.captions[key]
        length, rows = features.shape[1], plan.rows

        # where each token of the new layout comes from in the stock one: caption, its padding, then the image
        j = torch.arange(longest, device=device)[None]
        caption_source = torch.where(j < captions[:, None], j, j + images)
        image_source = captions[:, None] + torch.arange(images, device=device)[None]
        order = torch.cat([caption_source, image_source], dim=1)

        negative = hidden.new_zeros(batch, length, channels)
        negative[rows] = features.to(hidden.dtype)
        negative_rotary = rotary.new_zeros(batch, length, rotary.shape[-1])
        negative_rotary[rows] = _shifted_rotary(model, captions[rows], negative_lengths, length).to(rotary.dtype)
        full_negative_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        full_negative_mask[rows] = negative_mask
        prompt_mask = j < captions[:, None]

        def relaid(t: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
            t = t.gather(1, order[..., None].expand(-1, -1, t.shape[-1]))
            return torch.cat([t[:, :longest], inserted, t[:, longest:]], dim=1)

        image_mask = torch.ones(batch, images, dtype=torch.bool, device=device)
        mask = torch.cat([prompt_mask, full_negative_mask, image_mask], dim=1)
        rotary = relaid(rotary, negative_rotary)
        plan.text_length, plan.negative_length = longest, length
        plan.text_key_masks = (prompt_mask, full_negative_mask)
        info.layout = _Layout(order, mask, rotary)
        arguments["hidden_states"] = relaid(hidden, negative)
        arguments["attention_mask"] = mask
        arguments["image_rotary_emb"] = rotary
        return unbind(bound)

    return pre_forward


def _follow(state: NAGState):
    """Before the other main layers: the mask and rotary table of the new layout."""

    def pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        layout = _layout(state)
        if layout is None:
            return None
        bound = bind_forward(module, args, kwargs)
        bound.arguments["attention_mask"] = layout.mask
        bound.arguments["image_rotary_emb"] = layout.rotary
        return unbind(bound)

    return pre_forward


def _leave(state: NAGState):
    """After the last main layer: drop the negative caption and put the stock layout back."""

    def post_forward(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        layout = _layout(state)
        if layout is None:
            return None
        prompt, negative = state.forward.text_length, state.forward.negative_length
        kept = torch.cat([output[:, :prompt], output[:, prompt + negative :]], dim=1)
        return torch.empty_like(kept).scatter_(1, layout.order[..., None].expand_as(kept), kept)

    return post_forward


def _refined_negative(model: torch.nn.Module, negative: NegativeText, like: torch.Tensor):
    """The negative caption through the model's caption path, alone: (features, mask, real lengths), cut to the
    longest real length."""
    embeds = negative.embeds
    mask = negative.mask
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    mask = mask.to(embeds.device)
    features = model.time_caption_embed.caption_embedder(embeds)
    patch = model.config.patch_size
    placeholder = like.new_zeros(embeds.shape[0], 1, patch, patch)  # the rotary embedder wants an image
    _, caption_rotary, *_ = model.rope_embedder(placeholder, mask)
    for layer in model.context_refiner:
        features = layer(features, mask, caption_rotary)
    lengths = mask.sum(dim=1)
    longest = int(lengths.max())
    return features[:, :longest], mask[:, :longest].bool(), lengths


def _shifted_rotary(model: torch.nn.Module, captions: torch.Tensor, lengths: torch.Tensor, width: int):
    """Rotary table of the negative's tokens in the main layers: first-axis position j + c − n for token j < n (the
    prompt's caption length c, the negative's n), zero for its padding. Negative positions are the conjugates of
    the table's rows for |position|."""
    j = torch.arange(width, device=captions.device)[None]
    positions = j + (captions - lengths.to(captions.device))[:, None]
    ids = torch.zeros(*positions.shape, 3, dtype=torch.int32, device=captions.device)
    ids[..., 0] = positions.abs()
    rotary = model.rope_embedder._get_freqs_cis(ids)
    rotary = torch.where((positions < 0)[..., None], rotary.conj(), rotary)
    return torch.where((j < lengths.to(captions.device)[:, None])[..., None], rotary, torch.zeros_like(rotary))


LUMINA2 = Family(
    name="lumina2",
    denoiser_classes=("Lumina2Transformer2DModel",),
    timestep_units="reversed_fraction",
    text_width=("cap_feat_dim",),
    pipelines=("Lumina2Pipeline",),
    mechanism="joint",
    module_hooks=module_hooks,
    preset="generic",
    encode_returns=("embeds", "mask", "uncond", "uncond_mask"),
    mask_arg="encoder_attention_mask",
    attention=("layers.*.attn",),
    layout=JointLayout("sdpa", text_first=True),
    pre_forward=_plan_forward,
)
