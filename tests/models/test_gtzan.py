"""The GTZAN setting's synthetic clips and the shipped demo model (pipelines/assets/demo_gtzan_model.*)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from costream.models.audio import GTZAN_GENRES
from costream.models.synthetic import GtzanSyntheticConfig, clip_genres, make_gtzan_dataset
from costream.models.train import predict_stream, predict_windows
from costream.models.weights import weights_sha256
from costream.models.zoo import load_model, make_config

WEIGHTS = (
    Path(__file__).resolve().parents[2] / "pipelines" / "assets" / "demo_gtzan_model.safetensors"
)


def _accuracy(logits: list[np.ndarray], genres: np.ndarray) -> float:
    return float(np.mean([int(np.argmax(z[-1])) == g for z, g in zip(logits, genres)]))


def test_synthetic_clips_are_deterministic_balanced_and_vggish_like():
    cfg = GtzanSyntheticConfig(num_clips=20, seed=3)
    a, b = make_gtzan_dataset(cfg), make_gtzan_dataset(cfg)
    assert all(np.array_equal(x.features, y.features) for x, y in zip(a.videos, b.videos))
    other = make_gtzan_dataset(GtzanSyntheticConfig(num_clips=20, seed=3, split="val"))
    assert not np.array_equal(a.videos[0].features, other.videos[0].features)
    assert a.class_names == GTZAN_GENRES and a.background is None and a.ambiguous is None
    assert np.bincount(clip_genres(a), minlength=10).tolist() == [2] * 10
    x = a.videos[0].features
    assert x.shape == (120, 128) and x.dtype == np.float32 and x.min() >= 0
    assert (a.videos[0].targets == a.videos[0].targets[-1]).all()  # one genre per clip
    # neighbouring tokens (overlapping sub-clips) are correlated, distant ones much less
    z = x - x.mean(0)
    near = np.mean(np.sum(z[1:] * z[:-1], 1)) / np.mean(np.sum(z * z, 1))
    far = np.mean(np.sum(z[30:] * z[:-30], 1)) / np.mean(np.sum(z * z, 1))
    assert near > 0.4 and near > far + 0.2
    with pytest.raises(ValueError, match="min_section"):
        make_gtzan_dataset(GtzanSyntheticConfig(min_section=5, max_section=4))


def test_shipped_demo_gtzan_model():
    card = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert WEIGHTS.stat().st_size < 3_000_000
    model, stored = load_model(WEIGHTS)
    assert stored["sha256"] == card["sha256"] == weights_sha256(WEIGHTS)
    assert (card["name"], card["continual_name"], card["family"]) == (
        "gtzan_b1", "co_gtzan_b1", "gtzan",
    )  # fmt: skip
    assert model.config == make_config("gtzan_b1")  # the papers' full-size one-block model
    assert card["classes"] == GTZAN_GENRES and card["background"] is None
    m = card["metrics"]
    assert m["val_accuracy"] == m["val_accuracy_continual"]
    assert m["val_chance_accuracy"] == pytest.approx(0.1) and m["val_accuracy"] >= 5 * 0.1
    assert "synthetic" in card["notes"]["trained_on"]
    # fresh held-out clips (another split of the card's seed), streamed and regular
    syn = card["notes"]["synthetic"]
    ds = make_gtzan_dataset(
        GtzanSyntheticConfig(num_clips=60, seed=syn["seed"], split="demo-check")
    )
    genres = clip_genres(ds)
    co, _ = load_model(WEIGHTS, continual=True)
    out, _ = co.step(torch.zeros(1, 128), co.init_state(1))
    assert out.scores.shape == (1, 10) and not out.warm.item()
    acc = _accuracy(predict_windows(model, ds), genres)
    assert acc == _accuracy(predict_stream(co, ds), genres)
    assert acc >= 4 * 0.1, acc  # chance is 0.1: the genres are balanced
    # a stream whose first token has a large index keeps its accuracy (trained on random phases)
    acc_k = _accuracy(predict_windows(model, ds, first_index=12_345), genres)
    assert abs(acc_k - acc) <= 0.1 and acc_k == _accuracy(
        predict_stream(co, ds, first_index=12_345), genres
    )
