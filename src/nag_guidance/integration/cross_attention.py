"""NAG for families whose text enters through separate cross-attention layers (SD, SDXL, PixArt, SANA, Wan,
LTX-Video, LTX-2).

The negative rides along with the prompt (``denoiser_hooks``). A forward pre-hook on the denoiser appends the negative's
embeddings to the text input on the *sequence* axis, so everything the model does to text before attention
(caption projections and norms, LTX-2's per-block K/V modulation, Wan's image-context prefix) happens to the
negative too, with no per-model code. Each text-attention layer's processor is then wrapped:

1. the context is split back into the prompt's tokens and the negative's (tokens the model put in front of
   the text, like Wan I2V's image context, are shared by both);
2. the original processor runs on the conditional rows with the negative context and a *view* of the
   attention module whose ``to_out[0]`` keeps its input, Z-, and skips the projection;
3. the original processor runs as stock with the prompt context and a view whose ``to_out[0]`` replaces the
   conditional rows of its input, Z+, by NAG(Z+, Z-) before projecting. The query projection of step 2 is
   reused here, so the extra cost per layer is one attention over the negative's tokens.

The views (``_BranchView``) stand in for the module only inside the processor call; the module itself is never
changed, so compiled denoisers (``torch.compile``, ``compile_repeated_blocks``) trace NAG like any other code.

Running diffusers' own processor keeps attention backends, masks, norms, RoPE and gating exactly as stock.
Outside guided forwards the wrappers pass straight through.
"""

from __future__ import annotations

from typing import Any

import torch

from nag_guidance.integration.family import Family
from nag_guidance.integration.processors import ProcessorWrapper
from nag_guidance.integration.state import ForwardPlan


def wrapper_class(family: Family) -> type[ProcessorWrapper]:
    """The processor wrapper of the cross-attention mechanism, for where the family's shared context sits."""
    return _ContextAfterText if family.context_after_text else CrossAttentionNAG


class CrossAttentionNAG(ProcessorWrapper):
    """Runs the wrapped cross-attention processor once per branch and guides Z+ before ``to_out[0]``."""

    shared_after_text = False  # the model appends its own context tokens to the text instead (see ``_split``)

    def run(self, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plan = self.state.forward
        if plan is None:
            return self.processor(attn, *args, **kwargs)
        bound = self.signature.bind(attn, *args, **kwargs)
        text, image_prompt = _text_and_image_prompt(bound.arguments.get("encoder_hidden_states"))
        if text is None:
            plan.call.note(f"{self.layer}: the text context is not a tensor: left unguided")
            return self.processor(attn, *args, **kwargs)
        positive, negative = _split(bound, plan, text, image_prompt, self.shared_after_text)
        hidden = bound.arguments["hidden_states"]
        rows = _folded_rows(plan, hidden.shape[0], self.layer)
        negative = _take_rows(negative, rows, hidden.shape[0])
        capture = _NegativeBranch(attn)
        self.processor(capture, *negative.args[1:], **negative.kwargs)
        if capture.z_neg is None:
            raise RuntimeError(
                f"{self.layer}: {type(self.processor).__name__} never called attn.to_out[0], so NAG cannot read its "
                "attention output; this processor is not supported"
            )
        guided = _PositiveBranch(attn, rows, capture.query, capture.z_neg, self.state, self.index)
        return self.processor(guided, *positive.args[1:], **positive.kwargs)


class _ContextAfterText(CrossAttentionNAG):
    shared_after_text = True


def _folded_rows(plan: ForwardPlan, batch: int, layer: str) -> slice:
    """The guided rows of an attention call whose batch folds frames into the denoiser's rows (Latte's spatial
    blocks, the 3D UNets: each sample's frames are consecutive rows, as ``repeat_interleave`` lays them out)."""
    if batch == plan.batch:
        return plan.rows
    if batch % plan.batch:
        raise RuntimeError(
            f"{layer}: attention batch {batch} is no multiple of the denoiser's batch {plan.batch}, so NAG cannot "
            "tell which of its rows are the prompt's"
        )
    frames = batch // plan.batch
    return slice(plan.rows.start * frames, plan.rows.stop * frames)


def _text_and_image_prompt(context: Any) -> tuple[torch.Tensor | None, list | None]:
    """The text context, and the IP-Adapter's image-prompt states when the UNet passes them along with it
    (``(text, [image-prompt states per adapter])``, which diffusers' IP-Adapter processors take apart)."""
    if isinstance(context, torch.Tensor):
        return context, None
    if isinstance(context, tuple) and len(context) == 2 and isinstance(context[0], torch.Tensor):
        return context
    return None, None


def _split(bound, plan: ForwardPlan, context: torch.Tensor, image_prompt: list | None, shared_after_text: bool):
    """Two bindings of the processor call: one with the prompt's context (and mask), one with the negative's.

    Tokens the model adds to the text are shared context of both branches: in front of it ([shared | prompt |
    negative], Wan I2V's image tokens) or, with ``shared_after_text``, behind it ([prompt | negative | shared],
    I2VGenXL's image tokens). The IP-Adapter's image prompt goes to both branches unchanged: the negative replaces
    the text only, so NAG guides away from the negative text while the image prompt's attention, which the
    processor adds to the text attention before ``to_out[0]``, is the same in Z+ and Z-."""
    total = context.shape[1]
    text, negative_length = plan.text_length, plan.negative_length
    shared = total - text - negative_length
    if shared < 0:
        raise RuntimeError(
            f"text context of length {total} is shorter than prompt ({text}) + NAG negative "
            f"({negative_length}): the model changed the text length, which NAG cannot follow"
        )

    def branches(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        # contiguous copies (a few text tokens): the prompt branch then runs on exactly the stock memory layout
        def part(start: int, stop: int) -> torch.Tensor:
            return t.narrow(dim, start, stop - start)

        if shared_after_text:
            prompt = (
                part(0, text) if shared == 0 else torch.cat([part(0, text), part(text + negative_length, total)], dim)
            )
            negative = part(text, total)
        else:
            prompt = part(0, total - negative_length)
            negative = part(shared + text, total)
            negative = negative if shared == 0 else torch.cat([part(0, shared), negative], dim)
        return prompt.contiguous(), negative.contiguous()

    contexts = branches(context, 1)
    if image_prompt is not None:
        contexts = tuple((t, image_prompt) for t in contexts)
    positive = _rebind(bound, encoder_hidden_states=contexts[0])
    negative = _rebind(bound, encoder_hidden_states=contexts[1])
    mask = bound.arguments.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[-1] == total:
        positive.arguments["attention_mask"], negative.arguments["attention_mask"] = branches(mask, mask.ndim - 1)
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
    context = bound.arguments.get("encoder_hidden_states")
    if isinstance(context, tuple):  # (text, IP-Adapter image-prompt states): one batch of rows each
        text, image_prompt = context
        taken["encoder_hidden_states"] = (text[rows], [states[rows] for states in image_prompt])
    return _rebind(bound, **taken)


class _BranchView:
    """The attention module as one branch's processor call sees it: ``to_q`` and ``to_out`` are the branch's
    taps; every other attribute is the module's own, looked up at call time (so LoRA layers, offload hooks and
    backends are the current ones). Nothing on the module is changed, which keeps ``torch.compile`` happy."""

    def __init__(self, attn: torch.nn.Module) -> None:
        self.attn = attn

    def __getattr__(self, name: str) -> Any:
        return getattr(self.attn, name)


class _NegativeBranch(_BranchView):
    """Keeps the query projection and Z- (the input of ``to_out[0]``); the output projection is skipped, since
    the negative branch's output is never used."""

    def __init__(self, attn: torch.nn.Module) -> None:
        super().__init__(attn)
        self.query: torch.Tensor | None = None
        self.z_neg: torch.Tensor | None = None
        self.to_q = _Projection(attn.to_q, self._project_query)
        self.to_out = (_Projection(attn.to_out[0], self._capture), torch.nn.Identity())

    def _project_query(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.query = self.attn.to_q(x, *args, **kwargs)
        return self.query

    def _capture(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.z_neg = x
        width = getattr(self.attn.to_out[0], "out_features", x.shape[-1])
        return x.new_zeros(()).expand(*x.shape[:-1], width)  # a zero view: nothing is computed or stored


class _PositiveBranch(_BranchView):
    """Reuses the negative branch's query for the guided rows and replaces them in Z+ by NAG(Z+, Z-) before the
    output projection."""

    def __init__(
        self, attn: torch.nn.Module, rows: slice, query: torch.Tensor | None, z_neg: torch.Tensor, state, layer: int
    ) -> None:
        super().__init__(attn)
        self.rows, self.query, self.z_neg, self.state, self.layer = rows, query, z_neg, state, layer
        self.to_q = _Projection(attn.to_q, self._project_query)
        self.to_out = (_Projection(attn.to_out[0], self._guide_and_project), attn.to_out[1])

    def _project_query(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        project, rows, query = self.attn.to_q, self.rows, self.query
        if query is None or x.shape[1:-1] != query.shape[1:-1] or rows.stop - rows.start != query.shape[0]:
            return project(x, *args, **kwargs)
        parts = [project(x[: rows.start], *args, **kwargs)] if rows.start > 0 else []
        parts.append(query)
        if rows.stop < x.shape[0]:
            parts.append(project(x[rows.stop :], *args, **kwargs))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _guide_and_project(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = x.clone() if x._base is not None or not x.is_contiguous() else x  # guide a buffer of our own
        self.state.guide_(self.layer, x[self.rows], self.z_neg)
        return self.attn.to_out[0](x, *args, **kwargs)


class _Projection:
    """A stand-in for one projection module: calls go to ``call``, attribute reads (``weight``...) to the module."""

    def __init__(self, module: torch.nn.Module, call) -> None:
        self.module, self.call = module, call

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)
