"""NAG's guided joint attention under diffusers' Ulysses context parallelism (``ulysses_degree=P``).

Each rank holds a 1/P shard of the joint sequence: its chunk of the text (NAG's [prompt | negative], split by the
model's ``_cp_plan`` after NAG appended the negative) and its chunk of the image, all heads. As diffusers' Ulysses
attention does, the guided call trades sequence shards for head shards (an all-to-all), so that every rank sees
the whole sequence for H/P heads; it reorders that sequence into [prompt | negative | image], runs
``guided_joint_attention`` on it, and trades back. Z+ and Z- come back the same way, so NAG's per-token norms
(over all heads) are taken on each rank's own image tokens, with all their channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from nag_guidance.integration.attention import guided_joint_attention
from nag_guidance.integration.state import ForwardPlan


def ulysses_of(parallel_config: Any) -> tuple[int, Any] | None:
    """(degree, process group) of a diffusers parallel config running Ulysses attention, else None."""
    config = getattr(parallel_config, "context_parallel_config", None)
    if config is None or getattr(config, "ulysses_degree", 1) <= 1:
        return None
    return config.ulysses_degree, config._ulysses_mesh.get_group()


def _heads_for_sequence(x: torch.Tensor, degree: int, group: Any) -> torch.Tensor:
    """(B, S/P, H, D) on each rank -> (B, S, H/P, D): the ranks' sequence shards in rank order, a head shard."""
    batch, length, heads, dim = x.shape
    x = x.reshape(batch, length, degree, heads // degree, dim).permute(2, 1, 0, 3, 4).contiguous()
    received = torch.empty_like(x)
    dist.all_to_all_single(received, x, group=group)
    return received.flatten(0, 1).permute(1, 0, 2, 3)


def _sequence_for_heads(x: torch.Tensor, degree: int, group: Any) -> torch.Tensor:
    """The inverse of ``_heads_for_sequence``: (B, S, H/P, D) -> (B, S/P, H, D), contiguous."""
    batch, total, heads, dim = x.shape
    x = x.reshape(batch, degree, total // degree, heads, dim).permute(1, 3, 0, 2, 4).contiguous()
    received = torch.empty_like(x)
    dist.all_to_all_single(received, x, group=group)
    return received.flatten(0, 1).permute(1, 2, 0, 3).contiguous()


def _joint_order(degree: int, local: int, local_text: int, text_first: bool, device: torch.device) -> torch.Tensor:
    """Positions in the gathered sequence (rank 0's [text | image] shard, rank 1's ...) that put it in the joint
    order [text | image] (or [image | text]) of the unsharded model."""
    starts = torch.arange(degree, device=device)[:, None] * local
    text_offset, image_offset = (0, local_text) if text_first else (local - local_text, 0)
    text = (starts + text_offset + torch.arange(local_text, device=device)).flatten()
    image = (starts + image_offset + torch.arange(local - local_text, device=device)).flatten()
    return torch.cat([text, image] if text_first else [image, text])


def guided_ulysses_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: ForwardPlan,
    text_first: bool,
    scale: float | None,
    guide_: Callable[[torch.Tensor, torch.Tensor], None],
    attention: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ulysses: tuple[int, Any],
) -> torch.Tensor:
    """The guided joint attention of one rank's (B, S/P, H, D) shard; returns its (B, S/P, H, D) output."""
    degree, group = ulysses
    text = plan.text_length + plan.negative_length
    if text % degree or query.shape[2] % degree:
        raise ValueError(f"Ulysses degree {degree} must divide the text ({text} tokens) and the heads")
    local, local_text = query.shape[1], text // degree
    order = _joint_order(degree, local, local_text, text_first, query.device)
    q, k, v = (_heads_for_sequence(t, degree, group)[:, order].transpose(1, 2) for t in (query, key, value))
    captured: list[torch.Tensor] = []
    out = guided_joint_attention(
        q, k, v, None, plan, text_first, scale, lambda _, z_neg: captured.append(z_neg), attention
    )
    image = slice(text, out.shape[1]) if text_first else slice(0, out.shape[1] - text)
    negative = out.clone()
    negative[plan.rows, image] = captured[0].view_as(out[plan.rows, image])
    gathered = torch.empty_like(out)
    gathered[:, order] = out
    out = _sequence_for_heads(gathered, degree, group)
    gathered[:, order] = negative
    negative = _sequence_for_heads(gathered, degree, group)
    mine = slice(local_text, local) if text_first else slice(0, local - local_text)
    guide_(out[plan.rows, mine].flatten(2), negative[plan.rows, mine].flatten(2))
    return out
