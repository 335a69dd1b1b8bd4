"""Feature network for a Fréchet distance between generated and real procedural images.

A small CNN trained (stage ``features`` of the recipe) to read shape, colour, background and the shape's
position and size from pixels; its penultimate activations are the feature vector. Training images are partly
degraded (noise, blur, colour shifts) so that the features move smoothly as generated images drift from the
clean procedural ones, instead of only flipping at class boundaries.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nag_guidance.tiny import data

FEATURE_DIM = 64
HEADS: dict[str, int] = {"shape": len(data.SHAPES), "colour": len(data.COLOURS), "background": len(data.COLOURS)}
GEOMETRY = "geometry"
"""Regression head: (cx, cy, size), centred and scaled to about unit range."""


class FeatureNet(nn.Module):
    """Four strided convolutions → global average → ``FEATURE_DIM`` features → attribute heads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, n) for name, n in HEADS.items()})
        self.heads[GEOMETRY] = nn.Linear(FEATURE_DIM, 3)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) pixels in [-1, 1] → (N, FEATURE_DIM) penultimate features."""
        return self.body(pixels)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(pixels)
        return {name: head(feats) for name, head in self.heads.items()}


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def geometry_targets(samples: list[data.Sample]) -> torch.Tensor:
    centre = data.IMAGE_SIZE / 2
    mid_size = sum(data.SIZE_RANGE) / 2
    return torch.tensor(
        [
            [(s.cx - centre) / data.CENTRE_JITTER, (s.cy - centre) / data.CENTRE_JITTER, s.size - mid_size]
            for s in samples
        ],
        dtype=torch.float32,
    )


def feature_batch(seed: int, step: int, batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training batch: procedural images (all triples, held-out ones too), half of them degraded."""
    rng = np.random.default_rng([seed, step])
    samples = [data.random_sample(rng, data.ALL_TRIPLES) for _ in range(batch)]
    pixels = to_input(data.render_batch(samples))
    degrade = torch.from_numpy(rng.random(batch) < 0.5)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    blur = torch.nn.functional.avg_pool2d(pixels, 3, stride=1, padding=1, count_include_pad=False)
    amount = torch.rand(batch, 1, 1, 1, generator=generator)
    degraded = (1 - amount) * pixels + amount * blur
    degraded = degraded + 0.15 * torch.rand(batch, 1, 1, 1, generator=generator) * torch.randn(
        pixels.shape, generator=generator
    )
    degraded = degraded + 0.1 * torch.randn(batch, 3, 1, 1, generator=generator)
    pixels = torch.where(degrade.view(-1, 1, 1, 1), degraded.clamp(-1, 1), pixels)
    targets = {
        "shape": torch.tensor([data.SHAPES.index(s.shape) for s in samples]),
        "colour": torch.tensor([data.COLOURS.index(s.colour) for s in samples]),
        "background": torch.tensor([data.COLOURS.index(s.background) for s in samples]),
    }
    return pixels, {**targets, GEOMETRY: geometry_targets(samples)}


@torch.no_grad()
def extract_features(net: FeatureNet, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, FEATURE_DIM) float64 features of (N, H, W, 3) uint8 images."""
    parts = [net.features(to_input(images[i : i + batch])).double().numpy() for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples).

    The matrix square root goes through symmetric eigendecompositions, ``tr((S_a^½ S_b S_a^½)^½)``, which stays
    real and stable for the rank-deficient covariances of small sample sets.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(middle.clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
