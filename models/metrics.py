"""Per-frame online-action-detection metrics: mAP (THUMOS14 protocol) and mcAP (TVSeries).

Both score every evaluated frame of every test video as one pool (frames of all videos
together), per class, then average over the action classes.

* **Average precision** (non-interpolated): sort the frames by the class's score, descending;
  AP = (sum over true positives of the precision at that rank) / #positives.
* **Calibrated average precision** (De Geest et al. 2016, the TVSeries metric): the same, with
  the precision computed as ``w·TP / (w·TP + FP)`` where ``w = #negatives / #positives``, so a
  class's AP no longer depends on how rare it is (a random ranking scores 0.5).
* **Ties.** Frames with equal scores form one threshold: the precision used for every positive
  in a tie group is the precision after the whole group (as scikit-learn's
  ``average_precision_score``), so the result does not depend on the order of equal scores.
* **THUMOS14 protocol** (docs/continual-attention.md#the-oad-model-and-its-protocol, as OadTR/LSTR): frames whose ground truth is *Ambiguous*
  are dropped; the Ambiguous logit is dropped; softmax over the rest (Background + actions);
  AP per action class, Background excluded from the mean. Classes with no positive frame have
  no AP and are left out of the mean (LSTR's rule), and reported in ``classes_without_positives``.
* **TVSeries protocol**: no Ambiguous class; softmax over all classes; mcAP = mean calibrated AP
  over the action classes (Background excluded).

Example:
    >>> import numpy as np
    >>> average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1]))
    0.8333333333333333
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FrameMetrics",
    "average_precision",
    "calibrated_average_precision",
    "frame_metrics",
    "softmax",
]


def _ranked_counts(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts after each tie group, and the positives in each group."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must have the same length, got {scores.shape} and {labels.shape}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values; AP is undefined for them.")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # Index of the last frame of each tie group (a group = a run of equal scores).
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[ends].astype(np.float64)
    fp = (ends + 1) - tp
    group_pos = np.diff(np.r_[0.0, tp])
    return tp, fp, group_pos


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP of one class; NaN when there is no positive frame.

    Args:
        scores: ``(N,)`` the class's score per frame (higher = more confident).
        labels: ``(N,)`` truthy where the frame belongs to the class.
    """
    tp, fp, group_pos = _ranked_counts(scores, labels)
    n_pos = group_pos.sum()
    if n_pos == 0:
        return math.nan
    precision = tp / (tp + fp)
    return float(np.sum(group_pos * precision) / n_pos)


def calibrated_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Calibrated AP (TVSeries): precision ``w·TP/(w·TP+FP)``, ``w = #neg/#pos``; NaN without positives."""
    tp, fp, group_pos = _ranked_counts(scores, labels)
    n_pos = group_pos.sum()
    if n_pos == 0:
        return math.nan
    w = (len(np.asarray(labels).reshape(-1)) - n_pos) / n_pos
    if w == 0:  # every frame is positive: precision is 1 everywhere
        return 1.0
    precision = w * tp / (w * tp + fp)
    return float(np.sum(group_pos * precision) / n_pos)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@dataclass
class FrameMetrics:
    """Per-frame detection metrics over a pool of frames.

    ``mAP``/``mcAP`` are fractions in [0, 1] (multiply by 100 for the papers' percentages);
    NaN when no action class has a positive frame.
    """

    mAP: float
    mcAP: float
    per_class_ap: dict[str, float]
    per_class_cap: dict[str, float]
    frames: int
    excluded_frames: int
    classes_without_positives: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "mAP": self.mAP,
            "mcAP": self.mcAP,
            "frames": self.frames,
            "excluded_frames": self.excluded_frames,
            "per_class_ap": self.per_class_ap,
            "per_class_cap": self.per_class_cap,
            "classes_without_positives": self.classes_without_positives,
        }


def frame_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    background: int | None = 0,
    ambiguous: int | None = None,
    class_names: list[str] | None = None,
    apply_softmax: bool = True,
) -> FrameMetrics:
    """MAP and mcAP of per-frame scores, THUMOS14 protocol (``ambiguous`` set) or TVSeries (not).

    Args:
        logits: ``(N, C)`` per-frame model outputs over all C classes (logits when
            ``apply_softmax``; otherwise already probabilities, used as they are).
        targets: ``(N, C)`` one-hot (or multi-hot) ground truth; values >= 0.5 are positives.
        background: index of the Background class, excluded from the means (None: no background).
        ambiguous: index of the Ambiguous class: frames labelled with it are dropped and its
            logit is removed before the softmax (None: no such class).
        class_names: names for the per-class dictionaries (default ``"0"``, ``"1"``, …).
        apply_softmax: apply the protocol's softmax (False: ``logits`` are already scores).

    Returns:
        :class:`FrameMetrics` with mAP, mcAP and per-class values keyed by class name.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets) >= 0.5
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must both be (N, C) with the same shape, got {logits.shape} and {targets.shape}."
        )
    N, C = logits.shape
    names = list(class_names) if class_names is not None else [str(c) for c in range(C)]
    if len(names) != C:
        raise ValueError(f"class_names has {len(names)} names for {C} classes.")
    for label, idx in (("background", background), ("ambiguous", ambiguous)):
        if idx is not None and not 0 <= idx < C:
            raise ValueError(f"{label} index {idx} is outside the {C} classes.")

    keep_cols = [c for c in range(C) if c != ambiguous]
    keep_rows = ~targets[:, ambiguous] if ambiguous is not None else np.ones(N, dtype=bool)
    scores = logits[keep_rows][:, keep_cols]
    gt = targets[keep_rows][:, keep_cols]
    if apply_softmax:
        scores = softmax(scores, axis=1)

    ap: dict[str, float] = {}
    cap: dict[str, float] = {}
    missing: list[str] = []
    for j, c in enumerate(keep_cols):
        if c == background:
            continue
        if not gt[:, j].any():
            missing.append(names[c])
            continue
        ap[names[c]] = average_precision(scores[:, j], gt[:, j])
        cap[names[c]] = calibrated_average_precision(scores[:, j], gt[:, j])
    return FrameMetrics(
        mAP=float(np.mean(list(ap.values()))) if ap else math.nan,
        mcAP=float(np.mean(list(cap.values()))) if cap else math.nan,
        per_class_ap=ap,
        per_class_cap=cap,
        frames=int(keep_rows.sum()),
        excluded_frames=int(N - keep_rows.sum()),
        classes_without_positives=missing,
    )
