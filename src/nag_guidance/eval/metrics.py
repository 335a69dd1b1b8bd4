"""Metrics of one condition from the checker's readings: pure functions over arrays, tested on constructed
inputs.

- suppression: how much less often the negative's attribute value appears than without guidance;
- adherence: the prompt's own attributes still right;
- collapse detectors: the share of shape colours on the palette at all, and the entropy of the attribute
  distribution (CFG can "suppress red" by turning every shape an off-palette cyan, which a nearest-colour reading
  alone would count as a success);
- fidelity: the checker's "clean" share and confidence, and a Fréchet distance on features of the shipped
  classifier against real procedural images.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def rate(hits: np.ndarray) -> tuple[float, float]:
    """(share of True, its binomial standard error)."""
    hits = np.asarray(hits, dtype=bool)
    if hits.size == 0:
        raise ValueError("no samples")
    p = float(hits.mean())
    return p, math.sqrt(p * (1 - p) / hits.size)


def suppression(negative_rate: float, baseline_rate: float) -> float | None:
    """1 − rate/baseline: 1 = the negative's value never appears, 0 = as often as without guidance (None when
    the baseline never shows it)."""
    return None if baseline_rate <= 0 else 1.0 - negative_rate / baseline_rate


def entropy_bits(labels: Sequence[object]) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``labels``."""
    counts = Counter(labels)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return float(-sum(c / total * math.log2(c / total) for c in counts.values()))
