"""The cluster bootstrap of ``nag_guidance.eval.stats`` on synthetic data whose true spread is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nag_guidance.eval import stats


def _dataset(rng: np.random.Generator, prompts: int, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hits from a seed effect (sd 1), a prompt effect (sd 0.5) and noise (sd 0.5): x = u_s + v_p + e > 0.8."""
    u, v = rng.normal(0, 1.0, seeds), rng.normal(0, 0.5, prompts)
    p_index, s_index = np.repeat(np.arange(prompts), seeds), np.tile(np.arange(seeds), prompts)
    latent = u[s_index] + v[p_index] + rng.normal(0, 0.5, prompts * seeds)
    return (latent > 0.8).astype(float), p_index, s_index


TRUE_RATE = 0.5 * math.erfc(0.8 / math.sqrt(1.5) / math.sqrt(2))  # P(N(0, 1.5) > 0.8)


def test_the_naive_error_is_too_small_under_shared_seeds_and_the_cluster_bootstrap_is_right():
    rng = np.random.default_rng(0)
    estimates, naive, clustered, covered, naive_covered = [], [], [], 0, 0
    trials = 150
    for _ in range(trials):
        hits, prompts, seeds = _dataset(rng, prompts=12, seeds=16)
        estimate = stats.clustered_rate(hits, prompts, seeds, replicates=400)
        estimates.append(estimate.value)
        naive.append(stats.naive_rate_se(hits))
        clustered.append(estimate.se)
        covered += estimate.low <= TRUE_RATE <= estimate.high
        naive_covered += abs(estimate.value - TRUE_RATE) <= 1.96 * naive[-1]
    true_sd = float(np.std(estimates, ddof=1))  # how much the rate really moves between seed and prompt sets
    assert np.mean(naive) < 0.5 * true_sd  # the binomial error is less than half the real spread
    assert 0.75 * true_sd < np.mean(clustered) < 1.5 * true_sd
    assert covered / trials >= 0.88 and naive_covered / trials < 0.6


def test_without_cluster_effects_it_agrees_with_the_binomial_error_on_average():
    rng = np.random.default_rng(1)
    prompts, seeds = np.repeat(np.arange(16), 16), np.tile(np.arange(16), 16)
    clustered, naive = [], []
    for _ in range(60):
        hits = (rng.random(16 * 16) < 0.3).astype(float)
        clustered.append(stats.clustered_rate(hits, prompts, seeds, replicates=400).se ** 2)
        naive.append(stats.naive_rate_se(hits) ** 2)
    assert np.mean(clustered) == pytest.approx(np.mean(naive), rel=0.25)  # not the pigeonhole bootstrap's 3x


def test_an_image_repeated_once_per_negative_adds_no_precision():
    rng = np.random.default_rng(2)
    hits, prompts, seeds = _dataset(rng, prompts=6, seeds=16)
    once = stats.clustered_rate(hits, prompts, seeds)
    repeated = stats.clustered_rate(np.repeat(hits, 8), np.repeat(prompts, 8), np.repeat(seeds, 8))
    assert repeated == once  # same clusters, same draws: the duplicates move together
    assert stats.naive_rate_se(np.repeat(hits, 8)) == pytest.approx(stats.naive_rate_se(hits) / math.sqrt(8))


def test_a_ratio_on_shared_seeds_is_resampled_jointly():
    rng = np.random.default_rng(3)
    base, prompts, seeds = _dataset(rng, prompts=8, seeds=32)
    guided = base * (rng.random(base.size) < 0.5)  # the guided run removes half of each seed's hits

    def suppression(m):
        return 1 - m["guided"] / m["base"]

    joint = stats.clustered_statistic({"guided": guided, "base": base}, prompts, seeds, suppression)
    assert joint.low <= 0.5 <= joint.high and joint.value == pytest.approx(1 - guided.mean() / base.mean())
    # resampling the two rates with independent draws would ignore that easy seeds are easy for both
    g, b = stats.replicate_weights(seeds, seed=1), stats.replicate_weights(seeds, seed=2)
    independent = 1 - stats.weighted_means(guided, g) / stats.weighted_means(base, b)
    assert joint.se < 0.8 * np.nanstd(independent)


def test_bad_inputs():
    with pytest.raises(ValueError):
        stats.clustered_rate([1.0, 0.0], [0, 1], [0])
    with pytest.raises(ValueError):
        stats.replicate_weights([])
