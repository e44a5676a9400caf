"""Deterministic synthetic video and audio with known "action" intervals, for tests and the demo.

Video: a grey background with small moving distractor shapes; during an action interval one
large, distinctly coloured shape is drawn: a red square (``"red_square"``) or a blue circle
(``"blue_circle"``). Audio: faint noise; an 880 Hz tone (``"tone"``) or a loud noise burst
(``"burst"``) during action intervals. Every other frame/sample is ``"background"``. The same
seed always gives the same bytes.

Example:
    >>> video = synthetic_video(num_frames=50, seed=1)
    >>> len(video.frames), video.frames[0].shape, sorted(set(video.labels))[:1]
    (50, (120, 160, 3), ['background'])
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "AUDIO_CLASSES",
    "VIDEO_CLASSES",
    "Interval",
    "SyntheticAudio",
    "SyntheticVideo",
    "iter_synthetic_video",
    "synthetic_audio",
    "synthetic_video",
    "write_synthetic_video",
]

BACKGROUND = "background"
VIDEO_CLASSES = (BACKGROUND, "red_square", "blue_circle")
AUDIO_CLASSES = (BACKGROUND, "tone", "burst")

_RED = (220, 20, 20)  # RGB
_BLUE = (20, 40, 230)
_DISTRACTOR_COLOURS = ((40, 200, 40), (230, 230, 60), (250, 250, 250))


@dataclass(frozen=True)
class Interval:
    """An action from ``start`` (inclusive) to ``end`` (exclusive), in frames or samples."""

    start: int
    end: int
    label: str


def _intervals(
    total: int, min_len: int, max_len: int, classes: Sequence[str], rng: np.random.Generator
) -> list[Interval]:
    """Non-overlapping intervals separated by background, cycling through the action classes."""
    out: list[Interval] = []
    pos = int(rng.integers(min_len, 2 * min_len + 1))  # start with some background
    i = 0
    while True:
        length = int(rng.integers(min_len, max_len + 1))
        if pos + length > total:
            break
        out.append(Interval(pos, pos + length, classes[i % len(classes)]))
        i += 1
        pos += length + int(rng.integers(min_len, 2 * min_len + 1))
    return out


def _labels(total: int, intervals: Sequence[Interval]) -> list[str]:
    labels = [BACKGROUND] * total
    for iv in intervals:
        labels[iv.start : iv.end] = [iv.label] * (iv.end - iv.start)
    return labels


@dataclass(frozen=True)
class SyntheticVideo:
    """Frames (RGB uint8, (H, W, 3)), one ground-truth label per frame, and the intervals."""

    frames: list[np.ndarray]
    labels: list[str]
    intervals: list[Interval]
    fps: float
    classes: tuple[str, ...] = VIDEO_CLASSES


def _video_plan(
    num_frames: int, fps: float, seed: int
) -> tuple[list[Interval], np.random.Generator]:
    if num_frames <= 0 or fps <= 0:
        raise ValueError(f"num_frames and fps must be positive, got {num_frames} and {fps}.")
    rng = np.random.default_rng(seed)
    min_len = max(2, int(round(fps)))  # actions last 1-2 s
    return _intervals(num_frames, min_len, 2 * min_len, VIDEO_CLASSES[1:], rng), rng


def iter_synthetic_video(
    num_frames: int | None = 100,
    size: tuple[int, int] = (160, 120),
    fps: float = 10.0,
    seed: int = 0,
) -> Iterator[tuple[int, int, np.ndarray, str]]:
    """Yield ``(index, ts_ms, rgb, label)`` lazily; ``num_frames=None`` never ends.

    For an endless video the action schedule repeats every 1000 frames.
    """
    width, height = size
    period = 1000 if num_frames is None else num_frames
    intervals, rng = _video_plan(period, fps, seed)
    labels = _labels(period, intervals)
    # Distractors: position, velocity (px/frame), radius, colour.
    k = 3
    pos = rng.uniform([0, 0], [width, height], size=(k, 2))
    vel = rng.uniform(-0.04, 0.04, size=(k, 2)) * np.array([width, height])
    radius = max(2, min(width, height) // 16)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (90 + 40 * xx / max(width - 1, 1) + 20 * yy / max(height - 1, 1)).astype(np.uint8)
    background = np.repeat(base[:, :, None], 3, axis=2)
    big = max(4, min(width, height) // 3)
    index = 0
    while num_frames is None or index < num_frames:
        label = labels[index % period]
        img = background.copy()
        for j in range(k):
            c = tuple(int(v) for v in pos[j])
            if j == 1:
                tri = np.array(
                    [
                        [c[0], c[1] - radius],
                        [c[0] - radius, c[1] + radius],
                        [c[0] + radius, c[1] + radius],
                    ]
                )
                cv2.fillPoly(img, [tri.astype(np.int32)], _DISTRACTOR_COLOURS[j])
            else:
                cv2.circle(img, c, radius, _DISTRACTOR_COLOURS[j], -1)
        pos += vel
        for axis, limit in ((0, width), (1, height)):
            out = (pos[:, axis] < 0) | (pos[:, axis] > limit)
            vel[out, axis] *= -1
            pos[:, axis] = np.clip(pos[:, axis], 0, limit)
        if label != BACKGROUND:
            # The action shape drifts slowly across the frame so position alone does not tell.
            phase = (index % period) / period
            cx = int(big + phase * (width - 2 * big))
            cy = height // 2
            if label == "red_square":
                cv2.rectangle(
                    img, (cx - big // 2, cy - big // 2), (cx + big // 2, cy + big // 2), _RED, -1
                )
            else:
                cv2.circle(img, (cx, cy), big // 2, _BLUE, -1)
        yield index, int(round(1000 * index / fps)), img, label
        index += 1


def synthetic_video(
    num_frames: int = 100, size: tuple[int, int] = (160, 120), fps: float = 10.0, seed: int = 0
) -> SyntheticVideo:
    """Generate a whole synthetic video in memory (see :func:`iter_synthetic_video`)."""
    frames, labels = [], []
    for _, _, rgb, label in iter_synthetic_video(num_frames, size, fps, seed):
        frames.append(rgb)
        labels.append(label)
    intervals, _ = _video_plan(num_frames, fps, seed)
    return SyntheticVideo(frames, labels, intervals, fps)


def write_synthetic_video(
    path: str | os.PathLike[str],
    num_frames: int = 100,
    size: tuple[int, int] = (160, 120),
    fps: float = 10.0,
    seed: int = 0,
) -> SyntheticVideo:
    """Generate a synthetic video and write it with PyAV (H.264, even sizes); return the truth."""
    from costream.connectors.media import write_video_file

    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {size}.")
    video = synthetic_video(num_frames, size, fps, seed)
    write_video_file(path, video.frames, fps)
    return video


@dataclass(frozen=True)
class SyntheticAudio:
    """Mono float32 samples at ``rate`` Hz and the action intervals (in samples)."""

    samples: np.ndarray
    rate: int
    intervals: list[Interval]
    classes: tuple[str, ...] = AUDIO_CLASSES

    def chunk_labels(self, chunk_samples: int) -> list[str]:
        """Per-chunk ground truth: the label covering most samples of each chunk."""
        labels = np.array(_labels(len(self.samples), self.intervals), dtype=object)
        out = []
        for start in range(0, len(self.samples), chunk_samples):
            values, counts = np.unique(labels[start : start + chunk_samples], return_counts=True)
            out.append(str(values[int(np.argmax(counts))]))
        return out


def synthetic_audio(duration_s: float = 10.0, rate: int = 16000, seed: int = 0) -> SyntheticAudio:
    """Generate faint noise with 0.5-1 s tone and noise-burst events (deterministic in ``seed``)."""
    if duration_s <= 0 or rate <= 0:
        raise ValueError(f"duration_s and rate must be positive, got {duration_s} and {rate}.")
    rng = np.random.default_rng(seed)
    total = int(round(duration_s * rate))
    intervals = _intervals(total, rate // 2, rate, AUDIO_CLASSES[1:], rng)
    x = (0.01 * rng.standard_normal(total)).astype(np.float32)
    t = np.arange(total, dtype=np.float64) / rate
    for iv in intervals:
        seg = slice(iv.start, iv.end)
        if iv.label == "tone":
            x[seg] += (0.5 * np.sin(2 * np.pi * 880.0 * t[seg])).astype(np.float32)
        else:
            x[seg] += (0.4 * rng.standard_normal(iv.end - iv.start)).astype(np.float32)
    return SyntheticAudio(np.clip(x, -1.0, 1.0), rate, intervals)
