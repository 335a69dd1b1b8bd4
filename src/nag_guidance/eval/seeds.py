"""The seed ranges of `nag eval`: one source of truth for where tuning ends and reporting begins."""

from __future__ import annotations

TUNING_SEED_START = 0
"""Sweeps and option searches draw their seeds from here (``TUNING_SEED_START`` + 0, 1, …)."""
REPORTING_SEED_START = 1000
"""Results pages and the README's numbers draw theirs from here: disjoint from every tuning seed (tuning runs use
at most ``REPORTING_SEED_START − TUNING_SEED_START`` seeds)."""


def seed_list(count: int, start: int) -> list[int]:
    """``count`` consecutive seeds from ``start``; a tuning range may not reach the reporting range."""
    if count < 1:
        raise ValueError(f"need at least one seed, got {count}")
    if start < REPORTING_SEED_START and start + count > REPORTING_SEED_START:
        raise ValueError(
            f"seeds {start}..{start + count - 1} would overlap the reporting range ({REPORTING_SEED_START}..)"
        )
    return list(range(start, start + count))


def seed_range_text(seeds: list[int] | tuple[int, int]) -> str:
    """ "1000–1015" for a list of consecutive seeds or a (start, count) pair."""
    start, count = (seeds[0], len(seeds)) if isinstance(seeds, list) else seeds
    role = "reporting" if start >= REPORTING_SEED_START else "tuning"
    return f"{start}–{start + count - 1} ({role} range)"
