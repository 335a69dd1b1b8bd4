"""NAG for families whose text enters through separate cross-attention layers (SD, SDXL, PixArt, SANA, Wan,
LTX-Video, LTX-2).

The negative rides along with the prompt. A forward pre-hook on the denoiser appends the negative's
embeddings to the text input on the *sequence* axis, so everything the model does to text before attention
(caption projections and norms, LTX-2's per-block K/V modulation, Wan's image-context prefix) happens to the
negative too, with no per-model code. Each text-attention layer's processor is then wrapped:

1. the context is split back into the prompt's tokens and the negative's (tokens the model put in front of
   the text, like Wan I2V's image context, are shared by both);
2. the original processor runs on the conditional rows with the negative context, while its output
   projection ``to_out[0]`` is tapped: its input is Z-, and the projection itself is skipped;
3. the original processor runs as stock with the prompt context, and the tap on ``to_out[0]`` replaces the
   conditional rows of its input, Z+, by NAG(Z+, Z-) before the projection. The query projection of step 2 is
   reused here, so the extra cost per layer is one attention over the negative's tokens.

Running diffusers' own processor keeps attention backends, masks, norms, RoPE and gating exactly as stock.
Outside guided forwards the wrappers pass straight through.
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration import negative_text
from nag_guidance.integration.hooks import ProcessorWrapper, routed_forward
from nag_guidance.integration.registry import Family, Undo
from nag_guidance.integration.state import ForwardPlan, NAGState


def install(pipe: Any, family: Family, state: NAGState) -> list[Undo]:
    """Wrap every text-attention processor of the family's denoisers; returns the undo actions."""
    return negative_text.install(pipe, family, state, CrossAttentionNAG)


class CrossAttentionNAG(ProcessorWrapper):
    """Runs the wrapped cross-attention processor once per branch and guides Z+ before ``to_out[0]``."""

    def run(self, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plan = self.state.forward
        if plan is None:
            return self.processor(attn, *args, **kwargs)
        bound = self.signature.bind(attn, *args, **kwargs)
        context = bound.arguments.get("encoder_hidden_states")
        if not isinstance(context, torch.Tensor):
            self.state.call.note(f"{self.layer}: the text context is not a tensor (IP-Adapter?): left unguided")
            return self.processor(attn, *args, **kwargs)
        positive, negative = _split(bound, plan)
        rows = plan.rows
        hidden = bound.arguments["hidden_states"]
        box: dict[str, torch.Tensor] = {}
        with routed_forward(attn.to_q, _remember_query(box)), routed_forward(attn.to_out[0], _capture(box)):
            self.processor(*_take_rows(negative, rows, hidden.shape[0]).args, **negative.kwargs)
        if "z_neg" not in box:
            self.state.call.note(f"{self.layer}: the processor never called to_out[0]: left unguided")
            return self.processor(*positive.args, **positive.kwargs)
        reuse = _reuse_query(box, rows)
        guide = _guide(self.state, self.layer, rows, box["z_neg"])
        with routed_forward(attn.to_q, reuse), routed_forward(attn.to_out[0], guide):
            return self.processor(*positive.args, **positive.kwargs)


def _split(bound, plan: ForwardPlan):
    """Two bindings of the processor call: one with the prompt's context (and mask), one with the negative's."""
    context = bound.arguments["encoder_hidden_states"]
    total = context.shape[1]
    cut = total - plan.negative_length
    prefix = cut - plan.text_length  # tokens the model put in front of the text (Wan I2V image context)
    if prefix < 0:
        raise RuntimeError(
            f"text context of length {total} is shorter than prompt ({plan.text_length}) + NAG negative "
            f"({plan.negative_length}): the model changed the text length, which NAG cannot follow"
        )
    # contiguous copies (a few text tokens): the prompt branch then runs on exactly the stock memory layout
    positive = _rebind(bound, encoder_hidden_states=context[:, :cut].contiguous())
    negative_context = context[:, cut:] if prefix == 0 else torch.cat([context[:, :prefix], context[:, cut:]], 1)
    negative = _rebind(bound, encoder_hidden_states=negative_context.contiguous())
    mask = bound.arguments.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[-1] == total:
        positive.arguments["attention_mask"] = mask[..., :cut].contiguous()
        negative.arguments["attention_mask"] = (
            mask[..., cut:] if prefix == 0 else torch.cat([mask[..., :prefix], mask[..., cut:]], -1)
        ).contiguous()
    return positive, negative


def _rebind(bound, **changes: Any):
    copy = bound.signature.bind_partial()
    copy.arguments.update(bound.arguments)
    copy.arguments.update(changes)
    return copy


def _take_rows(bound, rows: slice, batch: int):
    """The binding restricted to the guided rows (every tensor argument whose first dim is the batch)."""
    if rows.start == 0 and rows.stop == batch:
        return bound
    taken = {
        name: value[rows]
        for name, value in bound.arguments.items()
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch
    }
    return _rebind(bound, **taken)


def _remember_query(box: dict):
    def make(_module, original):
        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            box["query"] = out = original(x, *args, **kwargs)
            return out

        return forward

    return make


def _capture(box: dict):
    """Tap for the negative branch: keep Z- and skip the output projection (its result is never used)."""

    def make(projection, original):
        width = getattr(projection, "out_features", None)

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            box["z_neg"] = x
            return x.new_zeros(*x.shape[:-1], width) if width else original(x, *args, **kwargs)

        return forward

    return make


def _reuse_query(box: dict, rows: slice):
    """Tap for the prompt branch: the conditional rows' query was already computed by the negative branch."""

    def make(_module, original):
        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            query = box.get("query")
            if query is None or x.shape[1:-1] != query.shape[1:-1] or rows.stop - rows.start != query.shape[0]:
                return original(x, *args, **kwargs)
            parts = [original(x[: rows.start], *args, **kwargs)] if rows.start > 0 else []
            parts.append(query)
            if rows.stop < x.shape[0]:
                parts.append(original(x[rows.stop :], *args, **kwargs))
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return forward

    return make


def _guide(state: NAGState, layer: str, rows: slice, z_neg: torch.Tensor):
    """Tap for the prompt branch: replace the conditional rows of Z+ by NAG(Z+, Z-), then project."""

    def make(_module, original):
        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            x = x.clone() if x._base is not None or not x.is_contiguous() else x  # guide a buffer of our own
            state.guide_(layer, x[rows], z_neg)
            return original(x, *args, **kwargs)

        return forward

    return make
