"""Uncertainty of `nag eval`'s rates when samples share prompts and seeds.

A cell of the suite is every (pair, seed) of one kind under one condition. Its samples are not independent: every
pair of a kind uses the same seeds, so an unusually easy seed is easy for every pair, and pairs that share a prompt
share its difficulty (an unguided image is even the *same* image for every negative of its prompt). The binomial
standard error √(p(1−p)/n) treats the n samples as independent and is too small whenever those effects exist.

The error here is two-way cluster-robust (Cameron, Gelbach & Miller 2011): with V_prompt the variance of the
statistic under a bootstrap that resamples whole prompts, V_seed one that resamples whole seeds and V_image one
that resamples whole (prompt, seed) cells, V = V_prompt + V_seed − V_image (the cell term is counted in both
one-way terms; where the difference is not positive, the larger one-way term). A pair is nested in its prompt and
an unguided image shared by several pairs lies in one (prompt, seed) cell, so duplicates move together and add no
precision. The 95 % interval is the statistic ± 1.96 V^½. Any function of several rates measured on the same
prompts and seeds (suppression: 1 − guided/unguided) is bootstrapped with the same draws for all of them, so their
shared seeds cancel as they should. (Resampling prompts and seeds at once, the "pigeonhole" bootstrap, triples the
variance of independent samples; the combination above does not.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float
    low: float
    high: float

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {prefix: self.value, f"{prefix}_se": self.se, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


def _index(labels: Sequence[object]) -> tuple[np.ndarray, int]:
    _, index = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    return index.ravel(), int(index.max()) + 1 if len(index) else 0


def replicate_weights(clusters: Sequence[object], replicates: int = REPLICATES, seed: int = 0) -> np.ndarray:
    """(replicates, n) sample weights of a one-way cluster bootstrap: how often each sample's cluster was drawn."""
    index, n_clusters = _index(clusters)
    if n_clusters == 0:
        raise ValueError("no samples")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=replicates)
    return draws[:, index].astype(np.float64)


def _cells(prompts: Sequence[object], seeds: Sequence[object]) -> dict[str, list[str]]:
    prompts, seeds = [str(p) for p in prompts], [str(s) for s in seeds]
    if len(prompts) != len(seeds) or not prompts:
        raise ValueError("prompts and seeds must be equally long and non-empty")
    return {"prompt": prompts, "seed": seeds, "image": [f"{p}\x00{s}" for p, s in zip(prompts, seeds, strict=True)]}


def _combine(value: float, draws: dict[str, np.ndarray]) -> Estimate:
    var = {}
    for name, d in draws.items():
        d = np.asarray(d, dtype=np.float64)
        d = d[np.isfinite(d)]
        var[name] = float(d.var(ddof=1)) if d.size > 1 else float("nan")
    total = var["prompt"] + var["seed"] - var["image"]
    if not total > 0:
        total = max(var["prompt"], var["seed"])
    se = float(np.sqrt(total))
    return Estimate(value, se, value - 1.96 * se, value + 1.96 * se)


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per replicate, the weighted mean of ``values`` (NaN where a replicate drew no sample of them)."""
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.asarray(values, dtype=np.float64)) / total


def clustered_rate(
    values: Sequence[float], prompts: Sequence[object], seeds: Sequence[object], replicates: int = REPLICATES
) -> Estimate:
    """A rate (mean of 0/1 values) with its two-way cluster-robust error and 95 % interval."""
    return clustered_statistic({"x": values}, prompts, seeds, lambda m: m["x"], replicates)


def clustered_statistic(
    columns: dict[str, Sequence[float]],
    prompts: Sequence[object],
    seeds: Sequence[object],
    statistic: Callable[[dict[str, np.ndarray | float]], float],
    replicates: int = REPLICATES,
) -> Estimate:
    """Any function of column means (e.g. 1 − guided/unguided), all columns resampled with the same draws;
    ``statistic`` gets the means (floats, or arrays of one mean per replicate) by column name."""
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in columns.items()}
    point = float(statistic({name: float(a.mean()) for name, a in arrays.items()}))
    draws = {}
    for i, (name, clusters) in enumerate(_cells(prompts, seeds).items()):
        weights = replicate_weights(clusters, replicates, seed=i)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = {column: weighted_means(a, weights) for column, a in arrays.items()}
            draws[name] = np.asarray(statistic(means), dtype=np.float64)
    return _combine(point, draws)


def naive_rate_se(values: Sequence[float]) -> float:
    """The binomial standard error, for comparison: right only for independent samples."""
    values = np.asarray(values, dtype=np.float64)
    p = float(values.mean())
    return float(np.sqrt(p * (1 - p) / values.size))
