"""Plots people would rather see than read: score timelines and training curves (PNG, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "plot_score_timeline",
    "plot_top_scores",
    "plot_training_curve",
    "score_timeline_figure",
    "top_scores_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _intervals(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as half-open [start, end) frame intervals."""
    m = np.r_[False, np.asarray(mask, dtype=bool), False]
    edges = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _save(fig, path: str | Path) -> Path:  # a matplotlib Figure
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_score_timeline(
    scores: np.ndarray,
    labels: Sequence[str],
    gt: np.ndarray,
    path: str | Path,
    *,
    first_frame: int = 0,
    classes: Sequence[int] | None = None,
    skip: Sequence[int] = (),
    title: str | None = None,
    max_classes: int = 8,
    ignored: np.ndarray | None = None,
) -> Path:
    """Write :func:`score_timeline_figure` (the same arguments) as a PNG to ``path``."""
    fig = score_timeline_figure(
        scores, labels, gt, first_frame=first_frame, classes=classes, skip=skip, title=title,
        max_classes=max_classes, ignored=ignored,
    )  # fmt: skip
    return _save(fig, path)


def score_timeline_figure(
    scores: np.ndarray,
    labels: Sequence[str],
    gt: np.ndarray,
    *,
    first_frame: int = 0,
    classes: Sequence[int] | None = None,
    skip: Sequence[int] = (),
    title: str | None = None,
    max_classes: int = 8,
    ignored: np.ndarray | None = None,
) -> Any:
    """Per-class scores over frames, one strip per class, ground-truth intervals shaded.

    Returns the matplotlib ``Figure``; its top strip carries the legend (score, ground truth,
    ignored frames when there are any).

    Args:
        scores: ``(T, C)`` per-frame class scores (probabilities in [0, 1] read best).
        labels: the C class names.
        gt: ``(T, C)`` per-frame targets (>= 0.5 is positive), aligned with ``scores``.
        first_frame: frame index of row 0 (e.g. n-1 when the first n-1 frames were warm-up).
        classes: which classes to draw; default: the classes (not in ``skip``) that occur in
            ``gt`` or reach a score of 0.3, at most ``max_classes``, most frequent first.
        skip: classes never drawn by default (e.g. Background, Ambiguous).
        title: figure title.
        max_classes: most strips drawn when ``classes`` is not given.
        ignored: ``(T,)`` bool, frames the metric ignores (e.g. Ambiguous), shaded grey.
    """
    plt = _pyplot()
    scores, gt = np.asarray(scores, dtype=np.float64), np.asarray(gt) >= 0.5
    if scores.ndim != 2 or scores.shape != gt.shape or scores.shape[1] != len(labels):
        raise ValueError(
            f"scores {scores.shape} and gt {gt.shape} must both be (T, C) with C = {len(labels)} labels."
        )
    if classes is None:
        cand = [c for c in range(scores.shape[1]) if c not in set(skip)]
        cand = [c for c in cand if gt[:, c].any() or scores[:, c].max() >= 0.3]
        classes = sorted(cand, key=lambda c: -(gt[:, c].sum() + scores[:, c].sum()))[:max_classes]
        classes = sorted(classes)
    classes = list(classes) or [0]
    frames = first_frame + np.arange(len(scores))
    fig, axes = plt.subplots(
        len(classes), 1, figsize=(10, 0.9 + 1.1 * len(classes)), sharex=True, squeeze=False
    )
    for ax, c in zip(axes[:, 0], classes):
        for a, b in _intervals(ignored if ignored is not None else np.zeros(len(frames), bool)):
            ax.axvspan(frames[a] - 0.5, frames[b - 1] + 0.5, color="0.6", alpha=0.25, lw=0)
        for a, b in _intervals(gt[:, c]):
            ax.axvspan(frames[a] - 0.5, frames[b - 1] + 0.5, color="tab:green", alpha=0.25, lw=0)
        ax.plot(frames, scores[:, c], color="tab:blue", lw=1.2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(labels[c], rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([0, 1])
        ax.grid(alpha=0.3)
    from matplotlib.patches import Patch

    handles = [
        plt.Line2D([], [], color="tab:blue", lw=1.2, label="score"),
        Patch(color="tab:green", alpha=0.25, label="ground truth"),
    ]
    if ignored is not None and np.asarray(ignored, dtype=bool).any():
        handles.append(Patch(color="0.6", alpha=0.25, label="ignored"))
    axes[0, 0].legend(handles=handles, loc="upper right", fontsize=7, ncol=len(handles))
    axes[-1, 0].set_xlabel("frame (feature step)")
    fig.suptitle(title or "per-frame class scores", fontsize=10)
    fig.tight_layout()
    return fig


def plot_top_scores(series: Mapping[str, Sequence[tuple[int, float]]], path: str | Path) -> Path:
    """Write :func:`top_scores_figure` of ``series`` as a PNG to ``path``."""
    return _save(top_scores_figure(series), path)


def top_scores_figure(
    series: Mapping[str, Sequence[tuple[int, float]]], title: str | None = None
) -> Any:
    """Each stream's top score over its frame index, one line per stream, with a legend.

    Args:
        series: stream id -> ``(frame_index, top_score)`` pairs (any order; drawn sorted).
        title: figure title.

    Returns the matplotlib ``Figure``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for stream, points in series.items():
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label=stream)
    ax.set_xlabel("frame index")
    ax.set_ylabel("top score")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(title="stream", fontsize=8)
    fig.suptitle(title or "top score per frame", fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_curve(
    history: Sequence[dict[str, float]], path: str | Path, title: str | None = None
) -> Path:
    """Training loss, validation loss and validation mAP / mcAP against the step."""
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [h["train_loss"] for h in history], label="train loss (smoothed)")
    ax1.plot(steps, [h["val_loss"] for h in history], label="validation loss")
    ax1.set_xlabel("step")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(steps, [h["val_mAP"] for h in history], label="validation mAP")
    ax2.plot(steps, [h["val_mcAP"] for h in history], label="validation mcAP")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title or "training curve", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
