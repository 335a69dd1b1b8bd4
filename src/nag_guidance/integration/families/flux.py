"""Flux.1 (schnell, dev, Kontext): 19 dual-stream blocks ([text; image] joint attention) and 38 single-stream
blocks (text and image concatenated inside the block); NAG guides every one of them.

Flux gives every text token the position id (0, 0, 0), so the negative's tokens get the same ids whatever
its length. Kontext's reference-image tokens follow the image tokens in the sequence and count as image tokens.

The pooled CLIP vector of the negative's modulation: the prompt's by default (the negative's text rides in the
prompt rows, see ``joint_attention``). ``pooled="negative"`` is the NAG authors' Flux / Kontext method: the
transformer runs with text rows [prompt; negative] (padded to one length), pooled vectors and timesteps per row;
dual-stream blocks keep one image stream, modulated by the prompt rows (the authors' truncated norms), and
before the single-stream blocks the image stream is copied for the negative rows, which then evolve under the
negative's modulation; the output is the prompt rows'.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nag_guidance.integration.family import Family, JointLayout, NegativeRows, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState, NegativeText


def extend_text_ids(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    """The negative's text position ids: zeros, like the prompt's (2-D (L, 3) or the deprecated 3-D form)."""
    ids = arguments["txt_ids"]
    extra = ids.new_zeros(*ids.shape[:-2], plan.negative_length, ids.shape[-1])
    arguments["txt_ids"] = torch.cat([ids, extra], dim=-2)


def _negative_rows_inputs(arguments: dict[str, Any], plan: ForwardPlan, negative: NegativeText) -> None:
    """Texts as rows [prompt; negative] padded to one length (the padding masked out as keys), the pooled
    vectors [prompt's; negative's], timestep, guidance and ControlNet residuals of single blocks per row."""
    text = arguments["encoder_hidden_states"]
    batch = text.shape[0]
    if plan.rows != slice(0, batch):
        raise ValueError("pooled='negative' guides forwards whose every row is conditional (Flux batches no CFG)")
    if negative.pooled is None:
        raise ValueError("pooled='negative' needs the negative's pooled vector, and this negative has none")
    length = max(text.shape[1], negative.embeds.shape[1])
    prompt_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    negative_mask = (
        torch.ones(negative.embeds.shape[:2], dtype=torch.bool, device=text.device)
        if negative.mask is None
        else negative.mask.to(text.device).bool()
    )
    if length != text.shape[1] or length != negative.embeds.shape[1] or negative.mask is not None:
        plan.text_key_masks = tuple(F.pad(m, (0, length - m.shape[1])) for m in (prompt_mask, negative_mask))
    padded = [F.pad(t, (0, 0, 0, length - t.shape[1])) for t in (text, negative.embeds)]
    arguments["encoder_hidden_states"] = torch.cat(padded)
    pooled = arguments["pooled_projections"]
    arguments["pooled_projections"] = torch.cat([pooled, negative.pooled.to(pooled)])
    for name in ("timestep", "guidance"):
        value = arguments.get(name)
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            arguments[name] = torch.cat([value, value])
    samples = arguments.get("controlnet_single_block_samples")
    if samples is not None:
        arguments["controlnet_single_block_samples"] = [torch.cat([s, s]) for s in samples]
    ids = arguments["txt_ids"]
    arguments["txt_ids"] = ids.new_zeros(*ids.shape[:-2], length, ids.shape[-1])
    plan.text_length = plan.negative_length = length
    plan.negative_rows = True


def _negative_rows_hooks(model: torch.nn.Module, state: NAGState) -> Undo:
    """On the dual-stream blocks' image norms: the prompt rows' modulation only; on each single-stream block: the
    image stream copied for the negative rows (the first block gets B rows, the others 2B already); on the
    transformer: the prompt rows of the output. Shapes, not state, tell a negative-rows forward: stock forwards
    never have twice as many text rows (or output rows) as image rows."""

    def active() -> bool:
        return state.forward is not None and state.forward.negative_rows

    def image_norm(module: torch.nn.Module, args: tuple, kwargs: dict):
        # the dual-stream block calls norm1(hidden_states, emb=temb)
        x, emb = args[0], kwargs.get("emb")
        if not active() or emb is None or emb.shape[0] != 2 * x.shape[0]:
            return None
        return args, {**kwargs, "emb": emb[: x.shape[0]]}

    def single_block(module: torch.nn.Module, args: tuple, kwargs: dict):
        # the transformer calls each single-stream block with keyword arguments only
        image, text = kwargs.get("hidden_states"), kwargs.get("encoder_hidden_states")
        if not active() or args or text.shape[0] != 2 * image.shape[0]:
            return None
        return args, {**kwargs, "hidden_states": torch.cat([image, image])}

    def prompt_rows(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        image = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        sample = output[0] if isinstance(output, tuple) else output.sample
        if sample.shape[0] != 2 * image.shape[0]:  # stock, or not a negative-rows forward
            return None
        rows = image.shape[0]
        return (sample[:rows],) if isinstance(output, tuple) else type(output)(sample=sample[:rows])

    handles = [model.register_forward_hook(prompt_rows, with_kwargs=True)]
    for block in model.transformer_blocks:
        handles.append(block.norm1.register_forward_pre_hook(image_norm, with_kwargs=True))
    for block in model.single_transformer_blocks:
        handles.append(block.register_forward_pre_hook(single_block, with_kwargs=True))

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo


NEGATIVE_ROWS = NegativeRows(_negative_rows_inputs, _negative_rows_hooks)


def _flux_preset(pipe: Any) -> str:
    """Guidance-distilled (dev) or not (schnell), from the transformer's config; schnell without a transformer."""
    transformer = getattr(pipe, "transformer", None)
    return "flux-dev" if transformer is not None and transformer.config.get("guidance_embeds") else "flux-schnell"


FLUX = Family(
    name="flux",
    denoiser_classes=("FluxTransformer2DModel",),
    timestep_units="fraction",
    text_width=("joint_attention_dim",),
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    mechanism="joint",
    preset=_flux_preset,
    encode_returns=("embeds", "pooled", "ids"),
    mask_arg=None,
    ulysses=True,
    cfg_argument="true_cfg_scale",
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
    extend_inputs=extend_text_ids,
    pooled_arg="pooled_projections",
    negative_rows=NEGATIVE_ROWS,
)

FLUX_KONTEXT = Family(
    name="flux-kontext",
    timestep_units="fraction",
    text_width=("joint_attention_dim",),
    pipelines=("FluxKontextPipeline", "FluxKontextInpaintPipeline"),
    mechanism="joint",
    preset="flux-kontext",
    encode_returns=("embeds", "pooled", "ids"),
    mask_arg=None,
    ulysses=True,
    cfg_argument="true_cfg_scale",
    attention=("attn",),
    layout=JointLayout("dispatch", text_first=True),
    extend_inputs=extend_text_ids,
    pooled_arg="pooled_projections",
    negative_rows=NEGATIVE_ROWS,
)
