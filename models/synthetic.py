"""Synthetic online-action-detection data with learnable actions, deterministic from a seed.

Each video is background interleaved with action instances. A frame's feature is

    x_t = signal · P[c_t] + b_video + noise · ε_t,      ε_t ~ N(0, I)

where ``P`` holds one random prototype per class (Background included, shared by every split of
one seed), ``c_t`` is the frame's true class and ``b_video`` a small per-video offset. With the
defaults one frame alone is a noisy cue and a window of frames is a clear one, so a temporal
model trained for a few hundred steps beats chance by a wide margin (tests/models/test_train.py).

About 10% of the instances are labelled *Ambiguous* (the last class, as in THUMOS14) while their
features belong to a random action: the THUMOS protocol drops those frames from the metric.

Chance level: a scorer that ranks frames at random has an expected AP equal to the class's share
of positive frames, so the chance mAP is the mean positive fraction of the action classes
(:func:`chance_map`), about 0.1 with the defaults.

The GTZAN-style generator (:func:`make_gtzan_dataset`) makes clips of VGGish-like
128-d embeddings, one per 1 s sub-clip every 0.25 s, labelled with one of the 10 genres on every
token (``background`` and ``ambiguous`` None): see :class:`GtzanSyntheticConfig`.

Example:
    >>> ds = make_dataset(SyntheticConfig(num_videos=2, seed=0))
    >>> ds.feature_dim, ds.num_classes, ds.class_names[-1]
    (64, 6, 'Ambiguous')
    >>> g = make_gtzan_dataset(GtzanSyntheticConfig(num_clips=3))
    >>> g.feature_dim, g.num_classes, len(g.videos[0]), bool((g.videos[0].features >= 0).all())
    (128, 10, 120, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from costream.models.data import OadDataset, Video, write_npz_dir

__all__ = [
    "GtzanSyntheticConfig",
    "SyntheticConfig",
    "chance_map",
    "clip_genres",
    "make_dataset",
    "make_gtzan_dataset",
    "write_dataset",
]


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings; ``seed`` fixes the prototypes, ``split`` picks an independent video stream."""

    num_videos: int = 32
    feature_dim: int = 64
    num_actions: int = 4
    min_frames: int = 160
    max_frames: int = 320
    min_action: int = 8
    max_action: int = 32
    min_gap: int = 6
    max_gap: int = 48
    signal: float = 0.3
    noise: float = 1.0
    video_offset: float = 0.3
    ambiguous_rate: float = 0.1
    seed: int = 0
    split: str = "train"


def _prototypes(cfg: SyntheticConfig) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, 0])
    return rng.standard_normal((cfg.num_actions + 1, cfg.feature_dim))  # (C_real, D)


def _split_seed(split: str) -> int:
    return sum((i + 1) * ord(ch) for i, ch in enumerate(split))  # stable across runs (unlike hash)


def _video(rng: np.random.Generator, protos: np.ndarray, cfg: SyntheticConfig, name: str) -> Video:
    K = cfg.num_actions
    C = K + 2  # Background, K actions, Ambiguous
    T = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    feat_class = np.zeros(T, dtype=np.int64)  # class whose prototype the frame shows
    label = np.zeros(T, dtype=np.int64)  # class in the targets
    t = int(rng.integers(0, cfg.max_gap))
    while t < T:
        length = int(rng.integers(cfg.min_action, cfg.max_action + 1))
        c = int(rng.integers(1, K + 1))
        feat_class[t : t + length] = c
        label[t : t + length] = C - 1 if rng.random() < cfg.ambiguous_rate else c
        t += length + int(rng.integers(cfg.min_gap, cfg.max_gap + 1))
    offset = cfg.video_offset * rng.standard_normal(cfg.feature_dim)
    x = (
        cfg.signal * protos[feat_class]
        + offset
        + cfg.noise * rng.standard_normal((T, cfg.feature_dim))
    )
    return Video(name, x.astype(np.float32), np.eye(C, dtype=np.float32)[label])


def make_dataset(cfg: SyntheticConfig = SyntheticConfig()) -> OadDataset:
    """Generate ``cfg.num_videos`` videos of split ``cfg.split`` (same seed: same prototypes)."""
    if cfg.num_actions < 1 or cfg.num_videos < 1:
        raise ValueError("num_actions and num_videos must be at least 1.")
    if not 0 < cfg.min_frames <= cfg.max_frames:
        raise ValueError(
            f"Need 0 < min_frames <= max_frames, got {cfg.min_frames}, {cfg.max_frames}."
        )
    protos = _prototypes(cfg)
    rng = np.random.default_rng([cfg.seed, 1, _split_seed(cfg.split)])
    videos = [_video(rng, protos, cfg, f"{cfg.split}_{i:04d}") for i in range(cfg.num_videos)]
    names = ["Background"] + [f"action_{k}" for k in range(1, cfg.num_actions + 1)] + ["Ambiguous"]
    notes = {"generator": "costream.models.synthetic", "config": str(asdict(cfg))}
    return OadDataset(
        videos, names, background=0, ambiguous=len(names) - 1, source="synthetic", notes=notes
    )


def write_dataset(
    root: str | Path, cfg: SyntheticConfig = SyntheticConfig(), splits: dict[str, int] | None = None
) -> Path:
    """Write ``root/<split>/*.npz`` + ``root/dataset.json`` (default: 32 train, 8 test videos)."""
    splits = splits or {"train": cfg.num_videos, "test": max(1, cfg.num_videos // 4)}
    for split, count in splits.items():
        write_npz_dir(make_dataset(replace(cfg, split=split, num_videos=count)), root, split)
    return Path(root)


def chance_map(dataset: OadDataset, window: int = 1) -> float:
    """Expected mAP of a random ranking: mean positive fraction over action classes (scored frames).

    Only frames a model with ``window`` n scores are counted (index >= n-1 in each video), and
    Ambiguous frames are excluded, as in :func:`costream.models.metrics.frame_metrics`.
    """
    y = np.concatenate([v.targets[window - 1 :] for v in dataset.videos]) >= 0.5
    if dataset.ambiguous is not None:
        y = y[~y[:, dataset.ambiguous]]
    skip = {dataset.background, dataset.ambiguous}
    fracs = [y[:, c].mean() for c in range(y.shape[1]) if c not in skip and y[:, c].any()]
    return float(np.mean(fracs))


# -- GTZAN-style clips of VGGish-like embeddings ---------------------------------------------------
@dataclass(frozen=True)
class GtzanSyntheticConfig:
    """Clips of synthetic VGGish-like embeddings; ``seed`` fixes the genre prototypes.

    A clip of ``tokens`` steps (120 = 30 s at one 1 s sub-clip per 0.25 s) has one genre, drawn
    so the genres are balanced (chance accuracy 1 / genres). It is cut into sections of
    ``min_section`` … ``max_section`` tokens (1-6 s); a section shows its clip's genre prototype
    with probability ``own_genre``, else another genre's (music borrows), so single tokens are a
    weak cue and a window of them a strong one. Token t of a clip is

        x_t = relu(signal · P[section genre] + clip offset + e_t),   e_t = a e_{t-1} + noise · ε_t

    with ε_t ~ N(0, I) scaled so e_t has standard deviation ``noise`` and a = ``smooth``
    (neighbouring sub-clips overlap by 0.75 s, so their embeddings are correlated); the ReLU
    makes the embeddings non-negative, as VGGish's are.
    """

    num_clips: int = 100
    tokens: int = 120
    dim: int = 128
    genres: int = 10
    min_section: int = 4
    max_section: int = 24
    own_genre: float = 0.4
    signal: float = 0.6
    noise: float = 1.0
    clip_offset: float = 0.5
    smooth: float = 0.7
    seed: int = 0
    split: str = "train"


def _gtzan_clip(
    rng: np.random.Generator, protos: np.ndarray, genre: int, cfg: GtzanSyntheticConfig, name: str
) -> Video:
    T, G = cfg.tokens, cfg.genres
    shown = np.empty(T, dtype=np.int64)  # genre whose prototype each token shows
    t = 0
    while t < T:
        length = int(rng.integers(cfg.min_section, cfg.max_section + 1))
        other = int(rng.integers(0, G - 1))
        shown[t : t + length] = genre if rng.random() < cfg.own_genre else other + (other >= genre)
        t += length
    eps = rng.standard_normal((T, cfg.dim))
    e = np.empty_like(eps)
    e[0] = eps[0]
    a = cfg.smooth
    for k in range(1, T):  # AR(1) with unit stationary variance
        e[k] = a * e[k - 1] + math.sqrt(1 - a * a) * eps[k]
    offset = cfg.clip_offset * rng.standard_normal(cfg.dim)
    x = np.maximum(0.0, cfg.signal * protos[shown] + offset + cfg.noise * e)
    return Video(name, x.astype(np.float32), np.tile(np.eye(G, dtype=np.float32)[genre], (T, 1)))


def make_gtzan_dataset(cfg: GtzanSyntheticConfig = GtzanSyntheticConfig()) -> OadDataset:
    """``cfg.num_clips`` clips of split ``cfg.split``, genres balanced (same seed: same prototypes).

    Class names are the GTZAN genres when ``genres`` is 10; Background and Ambiguous are None.
    """
    from .audio import GTZAN_GENRES

    if cfg.num_clips < 1 or cfg.genres < 2 or cfg.tokens < 1:
        raise ValueError("num_clips >= 1, genres >= 2 and tokens >= 1 are required.")
    if not 1 <= cfg.min_section <= cfg.max_section:
        raise ValueError(
            f"Need 1 <= min_section <= max_section, got {cfg.min_section}, {cfg.max_section}."
        )
    if not 0.0 <= cfg.smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {cfg.smooth}.")
    protos = np.random.default_rng([cfg.seed, 2]).standard_normal((cfg.genres, cfg.dim))
    rng = np.random.default_rng([cfg.seed, 3, _split_seed(cfg.split)])
    genres = rng.permutation(np.arange(cfg.num_clips) % cfg.genres)  # balanced, shuffled
    clips = [
        _gtzan_clip(rng, protos, int(g), cfg, f"{cfg.split}_{i:04d}") for i, g in enumerate(genres)
    ]
    names = (
        list(GTZAN_GENRES)
        if cfg.genres == len(GTZAN_GENRES)
        else [f"genre_{k}" for k in range(cfg.genres)]
    )
    notes = {
        "generator": "costream.models.synthetic.make_gtzan_dataset",
        "config": str(asdict(cfg)),
    }
    return OadDataset(
        clips, names, background=None, ambiguous=None, source="synthetic", notes=notes
    )


def clip_genres(dataset: OadDataset) -> np.ndarray:
    """The genre index of every clip (its last token's label): (num_clips,) int64."""
    return np.array([int(np.argmax(v.targets[-1])) for v in dataset.videos], dtype=np.int64)


def main(argv: list[str] | None = None) -> None:
    """``python -m costream.models.synthetic OUT [--train N] [--test N] [--dim D] [--seed S]``."""
    import argparse

    p = argparse.ArgumentParser(description="Write a synthetic OAD dataset (.npz per video).")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=32, help="training videos")
    p.add_argument("--test", type=int, default=8, help="test videos")
    p.add_argument("--dim", type=int, default=64, help="feature dimension D")
    p.add_argument(
        "--actions", type=int, default=4, help="action classes (plus Background, Ambiguous)"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = SyntheticConfig(feature_dim=a.dim, num_actions=a.actions, seed=a.seed)
    root = write_dataset(a.out, cfg, {"train": a.train, "test": a.test})
    print(f"wrote {root}/train ({a.train} videos) and {root}/test ({a.test} videos), D={a.dim}")


if __name__ == "__main__":
    main()
