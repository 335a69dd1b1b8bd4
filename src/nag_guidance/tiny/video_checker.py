"""Analytic video checker: what a clip of procedural frames shows and how its shape moves (no learned judge).

Each frame is read by the image checker (``checker.check``); a clip's shape, colour and background are the
majority readings over its frames. The shape's centroid in each frame (pixels nearer the frame's shape colour
than its background colour, the image checker's own rule) gives the track; the motion is the displacement
between the mean centroid of the first and last three frames: "still" under ``STILL_PIXELS``, otherwise the
dominant axis. Temporal consistency = fraction of frames whose own reading equals the clip's majority, and
``track_error`` = RMS distance of the centroids from their straight-line fit (a flickering or jumping shape).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from nag_guidance.tiny.checker import BORDER, check
from nag_guidance.tiny.data import COLOURS, SHAPES
from nag_guidance.tiny.video_data import MOTIONS, MOVING, SPEED, VideoSpec

STILL_PIXELS = 2.0 * SPEED
"""Displacement (pixels) below which a shape reads as still: a third of the 6 · SPEED pixels a moving shape's
mean centroid travels from the first three frames to the last three."""
EDGE_FRAMES = 3


@dataclass(frozen=True)
class VideoCheck:
    """Per-clip readings of a batch (arrays of length N); indices into ``SHAPES`` / ``COLOURS`` / ``MOTIONS``."""

    shape: np.ndarray
    colour: np.ndarray
    background: np.ndarray
    motion: np.ndarray
    displacement: np.ndarray
    consistency: np.ndarray
    track_error: np.ndarray
    on_palette: np.ndarray

    def __len__(self) -> int:
        return len(self.shape)

    def motion_names(self) -> list[str]:
        return [MOTIONS[i] for i in self.motion]

    def matches(self, specs: list[VideoSpec] | VideoSpec) -> dict[str, np.ndarray]:
        """Per clip: is each attribute a spec asks for right (an open one counts as right); ``all`` = every one."""
        specs = [specs] * len(self) if isinstance(specs, VideoSpec) else specs
        if len(specs) != len(self):
            raise ValueError(f"{len(specs)} specs for {len(self)} clips")

        def agree(wanted: list[str | None], got: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
            return np.array([w is None or (g >= 0 and names[g] == w) for w, g in zip(wanted, got, strict=True)])

        still = MOTIONS.index("still")
        motion = np.array(
            [
                s.motion is None or (m != still if s.motion == MOVING else MOTIONS[m] == s.motion)
                for s, m in zip(specs, self.motion, strict=True)
            ]
        )
        result = {
            "shape": agree([s.shape for s in specs], self.shape, SHAPES),
            "colour": agree([s.colour for s in specs], self.colour, COLOURS)
            & (np.array([s.colour is None for s in specs]) | self.on_palette),
            "background": agree([s.background for s in specs], self.background, COLOURS),
            "motion": motion,
        }
        result["all"] = result["shape"] & result["colour"] & result["background"] & result["motion"]
        return result


def _majority(values: np.ndarray) -> np.ndarray:
    """Per row of (N, F) integer readings (-1: nothing found): the most common value (ties: the smallest)."""
    shifted = values + 1
    counts = np.stack([np.bincount(row, minlength=shifted.max() + 1) for row in shifted])
    return counts.argmax(1) - 1


def centroids(frames: np.ndarray, shape_rgb: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """(M, 2) x, y centroids of the shape pixels of (M, H, W, 3) frames (NaN where none)."""
    pixels = frames.astype(np.float32)
    to_shape = np.linalg.norm(pixels - shape_rgb[:, None, None, :], axis=-1)
    to_background = np.linalg.norm(pixels - background_rgb[:, None, None, :], axis=-1)
    mask = to_shape < to_background
    mask[:, :BORDER] = mask[:, -BORDER:] = False
    mask[:, :, :BORDER] = mask[:, :, -BORDER:] = False
    count = mask.sum((1, 2)).astype(np.float32)
    yy, xx = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (mask * xx).sum((1, 2)) / count
        y = (mask * yy).sum((1, 2)) / count
    return np.stack([x, y], 1)


def check_clips(clips: np.ndarray) -> VideoCheck:
    """Read every clip of an (N, F, H, W, 3) uint8 batch (F ≥ 2 · EDGE_FRAMES)."""
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
        raise ValueError(f"expected (N, F, H, W, 3) uint8 clips, got {clips.shape} {clips.dtype}")
    n, f = clips.shape[:2]
    if f < 2 * EDGE_FRAMES:
        raise ValueError(f"clips need at least {2 * EDGE_FRAMES} frames, got {f}")
    flat = clips.reshape(n * f, *clips.shape[2:])
    frames = check(flat)
    shape, colour, background = (_majority(v.reshape(n, f)) for v in (frames.shape, frames.colour, frames.background))
    agree = (
        (frames.shape.reshape(n, f) == shape[:, None])
        & (frames.colour.reshape(n, f) == colour[:, None])
        & (frames.background.reshape(n, f) == background[:, None])
    )
    track = centroids(flat, frames.shape_rgb, frames.background_rgb).reshape(n, f, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames without a shape (NaN centroids) are expected
        displacement = np.nanmean(track[:, -EDGE_FRAMES:], 1) - np.nanmean(track[:, :EDGE_FRAMES], 1)
        centre = np.nanmean(track, 1, keepdims=True)
    displacement = np.nan_to_num(displacement)
    still = np.linalg.norm(displacement, axis=1) < STILL_PIXELS
    horizontal = np.abs(displacement[:, 0]) >= np.abs(displacement[:, 1])
    direction = np.where(
        horizontal,
        np.where(displacement[:, 0] < 0, MOTIONS.index("left"), MOTIONS.index("right")),
        np.where(displacement[:, 1] < 0, MOTIONS.index("up"), MOTIONS.index("down")),
    )
    motion = np.where(still, MOTIONS.index("still"), direction)
    time = np.arange(f, dtype=np.float32) - (f - 1) / 2
    filled = np.nan_to_num(np.where(np.isnan(track), centre, track))
    slope = (filled * time[None, :, None]).sum(1) / (time**2).sum()
    fit = filled.mean(1, keepdims=True) + slope[:, None, :] * time[None, :, None]
    track_error = np.sqrt(((filled - fit) ** 2).sum(-1).mean(1))
    on_palette = frames.on_palette.reshape(n, f).mean(1) >= 0.5
    return VideoCheck(
        shape=shape,
        colour=colour,
        background=background,
        motion=motion.astype(np.int64),
        displacement=displacement,
        consistency=agree.mean(1),
        track_error=track_error,
        on_palette=on_palette,
    )
