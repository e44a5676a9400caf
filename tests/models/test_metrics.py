"""Per-frame AP / calibrated AP / THUMOS and TVSeries protocols against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from costream.models.metrics import (
    average_precision,
    calibrated_average_precision,
    frame_metrics,
    softmax,
)


def test_perfect_ranking():
    s, y = np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0])
    assert average_precision(s, y) == 1.0
    assert calibrated_average_precision(s, y) == 1.0


def test_inverted_ranking():
    # Ranked: neg, neg, neg, pos, pos -> precisions 1/4 and 2/5.
    s, y = np.array([0.1, 0.2, 0.3, 0.9, 0.8]), np.array([1, 1, 0, 0, 0])
    assert average_precision(s, y) == pytest.approx((1 / 4 + 2 / 5) / 2)
    # w = 3/2; calibrated precisions w*1/(w*1+3) = 1/3 and w*2/(w*2+3) = 1/2.
    assert calibrated_average_precision(s, y) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_mixed_ranking():
    s, y = np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])
    assert average_precision(s, y) == pytest.approx((1 + 2 / 3) / 2)
    # w = 1/2: (0.5/0.5) and (1/(1+1)).
    assert calibrated_average_precision(s, y) == pytest.approx((1 + 0.5) / 2)


def test_ties_form_one_threshold_whatever_their_order():
    # All tied: one group, precision 2/4 for both positives.
    assert average_precision(np.full(4, 0.5), np.array([1, 0, 1, 0])) == 0.5
    assert calibrated_average_precision(np.full(4, 0.5), np.array([1, 0, 1, 0])) == 0.5
    # Groups {0.9: neg}, {0.5: pos, neg}, {0.1: pos}: precisions 1/3 then 2/4.
    s = np.array([0.9, 0.5, 0.5, 0.1])
    a = average_precision(s, np.array([0, 1, 0, 1]))
    b = average_precision(s, np.array([0, 0, 1, 1]))  # same ties, other order
    assert a == b == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_class_without_positives():
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))
    assert math.isnan(calibrated_average_precision(np.array([0.3, 0.2]), np.array([0, 0])))
    # In the protocol it is left out of the mean and reported.
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.5, 0.2]])
    targets = np.eye(3)[[0, 1, 0]]
    m = frame_metrics(logits, targets, background=0, class_names=["bg", "a", "b"])
    assert m.classes_without_positives == ["b"] and list(m.per_class_ap) == ["a"]
    assert m.mAP == 1.0


def test_matches_bruteforce_definition_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, y = rng.random(50), rng.random(50) < 0.3
        order = np.argsort(-s)
        hits = np.cumsum(y[order])
        ranks = np.flatnonzero(y[order]) + 1
        ap = np.mean(hits[ranks - 1] / ranks)
        w = (~y).sum() / y.sum()
        cap = np.mean([w * hits[r - 1] / (w * hits[r - 1] + (r - hits[r - 1])) for r in ranks])
        assert average_precision(s, y) == pytest.approx(ap)
        assert calibrated_average_precision(s, y) == pytest.approx(cap)


def test_random_scores_calibrated_ap_is_half():
    rng = np.random.default_rng(1)
    y = rng.random(20000) < 0.05
    assert calibrated_average_precision(rng.random(20000), y) == pytest.approx(0.5, abs=0.03)
    assert average_precision(rng.random(20000), y) == pytest.approx(y.mean(), abs=0.02)


def test_thumos_protocol_drops_ambiguous_frames_and_logit():
    # classes: 0 Background, 1 action, 2 Ambiguous
    logits = np.array(
        [
            [0.0, 0.5, 0.0],  # background frame
            [0.0, 1.0, 5.0],  # action frame with a large Ambiguous logit
            [0.0, 9.0, 0.0],  # Ambiguous frame scoring high for the action
            [0.0, 1.0, 5.0],  # action frame
        ]
    )
    targets = np.eye(3)[[0, 1, 2, 1]]
    m = frame_metrics(logits, targets, background=0, ambiguous=2)
    assert m.frames == 3 and m.excluded_frames == 1
    assert m.mAP == 1.0  # softmax over {bg, action} only: e/(1+e) > e^.5/(1+e^.5)
    # Keeping the Ambiguous logit in the softmax (wrong protocol) would rank the background frame first.
    wrong = softmax(logits[[0, 1, 3]])[:, 1]
    assert average_precision(wrong, np.array([0, 1, 1])) < 1.0
    # Keeping the Ambiguous frame (wrong protocol) would put a negative first.
    assert frame_metrics(logits, targets, background=0).per_class_ap["1"] < 1.0


def test_tvseries_protocol_mcap_is_mean_calibrated_ap_over_actions():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((200, 4))
    targets = np.eye(4)[rng.integers(0, 4, 200)]
    m = frame_metrics(logits, targets, background=0, ambiguous=None)
    p = softmax(logits)
    caps = [calibrated_average_precision(p[:, c], targets[:, c]) for c in (1, 2, 3)]
    aps = [average_precision(p[:, c], targets[:, c]) for c in (1, 2, 3)]
    assert m.mcAP == pytest.approx(np.mean(caps)) and m.mAP == pytest.approx(np.mean(aps))
    assert "0" not in m.per_class_cap  # background excluded


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        frame_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="outside"):
        frame_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ambiguous=5)
