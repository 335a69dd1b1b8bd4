"""A slow, independent NAG reference for the joint-attention families, for tests only.

It works the way the NAG authors' pipelines do, not the way the package does: the denoiser runs on a doubled
batch — rows [prompt; negative], image inputs tiled — so the negative's text stream is simply the second half
of the batch. Texts of different lengths are padded to a common length, and padded tokens are masked out as
keys. Every joint-attention call is replaced by plain attention in float64 over each half's own [text; image]
sequence; the image-token outputs of both halves are then set to NAG(prompt half, negative half), so the two
image streams stay identical and the prompt half of the output is the NAG result.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tests.integration.reference import nag_float64


def layer_names(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Module names matching the patterns: a pattern with a dot matches the whole name (fnmatch), one without
    the last component."""
    return [
        name
        for name, _ in model.named_modules()
        if any(fnmatch.fnmatchcase(name, p) if "." in p else name.rsplit(".", 1)[-1] == p for p in patterns)
    ]


def _rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """One row per batch row: given as such, or one row for all."""
    return t if t.shape[0] == batch else t.expand(batch, *t.shape[1:])


@dataclass
class JointReference:
    """``prompt_text`` / ``negative_text``: (embeds, mask) exactly as the denoiser takes text, one row per batch
    row or one row for all. ``extra_text``: other per-branch inputs (e.g. pooled vectors) as
    (prompt value, negative value) by argument name."""

    attention_owner: Any  # module whose attribute is the attention function
    attention_name: str
    bshd: bool  # layout of the intercepted call: (B, S, H, D) if True, else (B, H, S, D)
    text_first: bool
    text_arg: str
    mask_arg: str | None
    ids_arg: str | None  # 2-D text position ids (L, n) to extend with zeros, if the family has them
    prompt_text: tuple[torch.Tensor, torch.Tensor | None]
    negative_text: tuple[torch.Tensor, torch.Tensor | None]
    scale: float
    tau: float
    alpha: float
    extra_text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    attention_modules: tuple[str, ...] = ("attn",)  # the joint-attention modules (see ``layer_names``)
    mask_spans_image: bool = False  # the mask argument covers [text; image] (Chroma), not only the text
    ids_kind: str = "zeros"  # how the family's text position ids look: "zeros" (Flux) or "arange" (FLUX.2)
    trimmed_caption: bool = False  # each row's joint sequence is [its real caption (mask sum) | image | padding]
    extra_text_dims: dict[str, int] | None = None  # batch axis of ``extra_text`` entries other than 0
    image_tokens_of: Any = None  # bound denoiser arguments -> image tokens first in the joint sequence (HiDream)
    # norms (``layer_names`` patterns) that modulate the image stream from the prompt half's embedding in both
    # halves: the NAG authors' truncated norms in their Flux dual-stream blocks (pooled vectors per half)
    prompt_image_modulation: tuple[str, ...] = ()

    def install(self, denoiser: torch.nn.Module) -> None:
        self.active = self.inside = False
        self.guided_calls = 0
        self.image_tokens = None
        self.original = getattr(self.attention_owner, self.attention_name)
        setattr(self.attention_owner, self.attention_name, self._attention)
        denoiser.register_forward_pre_hook(self._double_batch, with_kwargs=True)
        denoiser.register_forward_hook(self._first_half)
        modulated = layer_names(denoiser, self.prompt_image_modulation) if self.prompt_image_modulation else []
        for name, module in denoiser.named_modules():
            if name in modulated:
                module.register_forward_pre_hook(self._prompt_half_embedding, with_kwargs=True)
            if name in layer_names(denoiser, self.attention_modules):
                module.register_forward_pre_hook(lambda *_: setattr(self, "inside", True))
                module.register_forward_hook(lambda *_: setattr(self, "inside", False))

    def uninstall(self) -> None:
        setattr(self.attention_owner, self.attention_name, self.original)

    def _prompt_half_embedding(self, module, args, kwargs):
        if not self.active:
            return None
        emb = kwargs["emb"]
        return args, {**kwargs, "emb": torch.cat([emb[: self.batch], emb[: self.batch]])}

    # -- batch doubling ------------------------------------------------------------------------

    def _double_batch(self, module, args, kwargs):
        bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
        arguments = bound.arguments
        text = arguments[self.text_arg]
        if isinstance(text, list):  # Z-Image: per-sample lists, image tokens first, the model pads and masks
            return self._double_lists(bound, text)
        batch = text.shape[0]
        length = max(self.prompt_text[0].shape[1], self.negative_text[0].shape[1])
        halves = [self._padded(self.prompt_text, length, text), self._padded(self.negative_text, length, text)]
        arguments[self.text_arg] = torch.cat([_rows(h[0], batch) for h in halves])
        self.key_mask = torch.cat([_rows(h[1], batch) for h in halves])  # (2B, L) bool: not our padding
        has_mask = any(t[1] is not None for t in (self.prompt_text, self.negative_text))
        if self.mask_arg and (arguments.get(self.mask_arg) is not None or has_mask):
            mask = arguments.get(self.mask_arg)
            new = torch.cat([_rows(h[2], batch) for h in halves]).to(torch.bool if mask is None else mask.dtype)
            if self.mask_spans_image:
                image = mask[:, text.shape[1] :]
                new = torch.cat([new, torch.cat([image, image])], dim=1)
            arguments[self.mask_arg] = new
        if self.ids_arg and self.ids_kind == "zeros":  # Flux: (L, 3) zeros
            ids = arguments[self.ids_arg]
            arguments[self.ids_arg] = torch.cat([ids, ids.new_zeros(length - ids.shape[0], ids.shape[1])])
        elif self.ids_arg:  # FLUX.2: (B, L, 4) with the last coordinate counting along the text
            ids = arguments[self.ids_arg]
            new = ids[:1, :1].expand(2 * batch, length, ids.shape[-1]).clone()
            new[..., -1] = torch.arange(length, dtype=ids.dtype)
            arguments[self.ids_arg] = new
        for name, (prompt_value, negative_value) in (self.extra_text or {}).items():
            dim = (self.extra_text_dims or {}).get(name, 0)
            if dim:  # e.g. HiDream's Llama states (layers, B, L, D)
                halves = [v.to(text).movedim(dim, 0) for v in (prompt_value, negative_value)]
                arguments[name] = torch.cat([_rows(h, batch) for h in halves]).movedim(0, dim)
                continue
            arguments[name] = torch.cat([_rows(prompt_value.to(text), batch), _rows(negative_value.to(text), batch)])
        if self.image_tokens_of is not None:  # the text is more than ``text_arg``: no padding of ours to mask
            assert self.prompt_text[0].shape[1] == self.negative_text[0].shape[1], "texts of different lengths"
            self.image_tokens = self.image_tokens_of(arguments)
        for name, value in list(arguments.items()):
            done = (self.text_arg, self.mask_arg, self.ids_arg, *(self.extra_text or {}))
            if name not in done and isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
                arguments[name] = torch.cat([value, value])
        if self.trimmed_caption:  # Lumina 2: the model drops the padding (ours included) by the mask
            self.captions = arguments[self.mask_arg].sum(dim=1)
        self.batch, self.text_length, self.active = batch, length, True
        return bound.args[1:], bound.kwargs

    def _double_lists(self, bound, captions):
        arguments = bound.arguments
        batch = len(captions)
        negatives = [row for row in self.negative_text[0]]
        negatives = negatives * batch if len(negatives) == 1 else negatives
        arguments[self.text_arg] = list(captions) + [n.to(captions[0]) for n in negatives]
        arguments["x"] = list(arguments["x"]) + list(arguments["x"])
        arguments["t"] = torch.cat([arguments["t"], arguments["t"]])
        channels, frames, height, width = arguments["x"][0].shape
        tokens = frames * (height // 2) * (width // 2)
        self.image_tokens = tokens + (-tokens) % 32
        self.batch, self.active = batch, True
        return bound.args[1:], bound.kwargs

    @staticmethod
    def _padded(text, length, like):
        """(embeds, which tokens exist, the model's own mask) padded to ``length``; the padding we add here is
        masked out as keys by the reference itself, and is 0 in the model's mask."""
        embeds, mask = text
        pad = length - embeds.shape[1]
        exists = F.pad(torch.ones(embeds.shape[:2], dtype=torch.bool), (0, pad))
        own = torch.ones(embeds.shape[:2]) if mask is None else mask.float()
        return F.pad(embeds.to(like), (0, 0, 0, pad)), exists.to(like.device), F.pad(own, (0, pad)).to(like.device)

    def _first_half(self, module, args, output):
        self.active = False
        first = output[0] if isinstance(output, (tuple, list)) else output.sample
        if isinstance(first, list):
            return (first[: self.batch],)
        half = first[: self.batch]
        return (half,) if isinstance(output, (tuple, list)) else type(output)(sample=half)

    # -- attention -------------------------------------------------------------------------------

    def _attention(self, query, key, value, attn_mask=None, *args, **kwargs):
        if not (self.active and self.inside) or query.shape[0] != 2 * self.batch:
            return self.original(query, key, value, attn_mask, *args, **kwargs)
        q, k, v = (t.transpose(1, 2) if self.bshd else t for t in (query, key, value))  # (2B, H, S, D)
        total = q.shape[2]
        keep = torch.ones(q.shape[0], total, dtype=torch.bool)
        if self.trimmed_caption:
            image = None  # per row, below; our padding is dropped by the model itself
        elif self.image_tokens is not None:
            image = slice(0, self.image_tokens)
        else:
            length = self.text_length
            text = slice(0, length) if self.text_first else slice(total - length, total)
            image = slice(length, total) if self.text_first else slice(0, total - length)
            keep[:, text] = self.key_mask
        bias = torch.zeros(q.shape[0], 1, 1, total, dtype=torch.float64).masked_fill(~keep[:, None, None], -torch.inf)
        if attn_mask is not None:
            bias = bias + (
                attn_mask.double() if attn_mask.dtype != torch.bool else torch.where(attn_mask, 0.0, -torch.inf)
            )
        scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
        out = torch.softmax(scores, -1) @ v.double()
        b = self.batch
        heads, dim = out.shape[1], out.shape[3]
        if self.trimmed_caption:  # the image starts after each row's own caption
            index = self.captions[:, None] + torch.arange(total - int(self.captions.max()))
            index = index[:, None, :, None].expand(-1, heads, -1, dim)
            z = out.gather(2, index).transpose(1, 2).flatten(2)
            guided = nag_float64(z[:b], z[b:], self.scale, self.tau, self.alpha)
            guided = guided.unflatten(-1, (heads, dim)).transpose(1, 2)
            out.scatter_(2, index, torch.cat([guided, guided]))
            self.guided_calls += 1
            out = out.to(query.dtype)
            return out.transpose(1, 2) if self.bshd else out
        z = out[:, :, image].transpose(1, 2).flatten(2)  # (2B, N, H·D)
        guided = nag_float64(z[:b], z[b:], self.scale, self.tau, self.alpha)
        guided = guided.unflatten(-1, (heads, dim)).transpose(1, 2)
        out[:b, :, image] = guided
        out[b:, :, image] = guided
        self.guided_calls += 1
        out = out.to(query.dtype)
        return out.transpose(1, 2) if self.bshd else out
