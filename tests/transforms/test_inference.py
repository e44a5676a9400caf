import time
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from costream.connectors import codecs
from costream.models.zoo import get_model, save_model
from costream.transforms.inference import ContinualInference, Stored, StreamStepper

D_IN, N, C = 6, 4, 3


class Rec(NamedTuple):
    stream_id: str
    frame_index: int
    ts_ms: int
    features: np.ndarray
    arrival_ms: float
    key: bytes
    value: bytes
    headers: list


def rec(stream, i, feats):
    return Rec(stream, i, 1000 + i, feats, None, stream.encode(), feats.astype("<f4").tobytes(), [])


@pytest.fixture(scope="module")
def regular():
    torch.manual_seed(0)
    return get_model("oadtr_b2", d_in=D_IN, d_model=16, window=N, heads=2, ffn=16, classes=C).eval()


@pytest.fixture(scope="module")
def weights(regular, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_model(regular, path, classes=["bg", "a", "b"])
    return str(path)


def stepper(regular, **kw):
    return StreamStepper(regular.to_continual(), "m@1", ["bg", "a", "b"], **kw)


def oracle_probs(regular, frames, t):
    """Softmax scores of the regular model on the last N frames of a stream that has seen t tokens."""
    w = torch.from_numpy(np.stack(frames[-N:])).unsqueeze(0)
    with torch.no_grad():
        return torch.softmax(regular(w, start=t - N)[0].double(), -1).numpy()


def feats(T, seed):
    return [f.astype(np.float32) for f in np.random.default_rng(seed).standard_normal((T, D_IN))]


def test_interleaved_streams_exact_against_regular_model(regular):
    s = stepper(regular)
    X = {"a": feats(3 * N + 2, 1), "b": feats(3 * N, 2)}
    store: dict[str, bytes] = {}
    order = (
        [("a", i) for i in range(3)]
        + [(k, i) for i in range(3, 3 * N) for k in ("b", "a")]
        + [("b", 0), ("b", 1), ("b", 2)]
    )
    # b's frames 0..2 arrive last, so b starts at frame 3: its first frame index is 3
    order = [(k, i) for k, i in order if not (k == "b" and i < 3)]
    seen = {"a": [], "b": []}
    checked = 0
    for k, i in order:
        blob, res = s.process(store.get(k), k, i, i, X[k][i])
        store[k] = blob
        seen[k].append(X[k][i])
        t = len(seen[k])
        assert res.detection.warm == (t >= N)
        if t >= N:
            np.testing.assert_allclose(
                res.detection.scores, oracle_probs(regular, seen[k], t), atol=1e-5
            )
            checked += 1
    assert checked == (3 * N - N + 1) + (3 * N - 3 - N + 1)  # a: frames 0..3N-1, b: 3..3N-1


def test_duplicates_dropped_and_state_untouched(regular):
    s = stepper(regular)
    X = feats(10, 3)
    blob = None
    for i in range(5):
        blob, _ = s.process(blob, "a", i, i, X[i])
    new, res = s.process(blob, "a", 3, 3, X[3])
    assert new is None and res.detection is None and res.events == ["duplicate"]


@pytest.mark.parametrize("policy", ["reset", "fill"])
def test_gap_policies(regular, policy):
    s = stepper(regular, gap_policy=policy)
    X = feats(20, 4)
    blob, history = None, []
    for i in range(6):
        blob, _ = s.process(blob, "a", i, i, X[i])
        history.append(X[i])
    blob, res = s.process(blob, "a", 8, 8, X[8])  # frames 6 and 7 missing
    assert "gap" in res.events
    if policy == "reset":
        assert "gap_reset" in res.events and not res.detection.warm
        for i in range(9, 9 + N - 1):
            blob, res = s.process(blob, "a", i, i, X[i])
        assert res.detection.warm
        np.testing.assert_allclose(
            res.detection.scores, oracle_probs(regular, X[8 : 8 + N], N), atol=1e-5
        )
    else:
        assert "gap_fill" in res.events and res.detection.warm
        filled = history + [X[5], X[5], X[8]]  # sample-and-hold for 6 and 7
        np.testing.assert_allclose(
            res.detection.scores, oracle_probs(regular, filled, len(filled)), atol=1e-5
        )
        _, res = s.process(blob, "a", 8 + N + 2, 0, X[0])  # longer than max_fill = N: resets
        assert "gap_reset" in res.events


def test_model_change_and_ttl_reset(regular):
    s = stepper(regular, ttl_ms=1000)
    X = feats(10, 5)
    blob = None
    for i in range(N):
        blob, res = s.process(blob, "a", i, i, X[i], now_ms=i)
    assert res.detection.warm
    other = StreamStepper(regular.to_continual(), "m@2", ["bg", "a", "b"])
    _, res = other.process(blob, "a", N, N, X[N], now_ms=N)
    assert res.events == ["model_change"] and not res.detection.warm
    _, res = s.process(blob, "a", N, N, X[N], now_ms=N + 5000)
    assert res.events == ["expired"] and not res.detection.warm


def test_bad_features_raise_and_keep_state(regular):
    s = stepper(regular)
    blob, _ = s.process(None, "a", 0, 0, feats(1, 6)[0])
    with pytest.raises(ValueError, match="NaN"):
        s.process(blob, "a", 1, 1, np.full(D_IN, np.nan, np.float32))
    with pytest.raises(ValueError, match="expects 6"):
        s.process(blob, "a", 1, 1, np.zeros(D_IN + 1, np.float32))
    assert Stored.from_bytes(blob).last_index == 0


def _detections(records):
    return [(r.key.decode(), codecs.decode_detection(r.value)) for r in records]


def test_pipeline_interleaved_streams_duplicates_and_poisoned_frame(regular, weights):
    X = {"a": feats(3 * N, 7), "b": feats(3 * N, 8)}
    elements = []
    for i in range(3 * N):
        elements.append(rec("a", i, X["a"][i]))
        elements.append(rec("b", i, X["b"][i]))
        if i == 5:
            elements.append(rec("a", 3, X["a"][3]))  # duplicate
            elements.append(
                rec("b", 6, np.full(D_IN, np.nan, np.float32))
            )  # poisoned; b's real 6 follows
    # the poisoned "b" frame 6 comes before the real one: it dead-letters; the real frame 6 then steps
    elements = [e for e in elements]
    expected = []
    for k in ("a", "b"):
        for i in range(3 * N):
            t = i + 1
            probs = oracle_probs(regular, X[k][: i + 1], t) if t >= N else None
            expected.append((k, i, t >= N, probs))

    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        out = p | beam.Create(elements) | ContinualInference(weights=weights, idle_timer=False)

        def check(records):
            got = {(k, d.frame_index): d for k, d in _detections(records)}
            assert len(got) == len(records) == 6 * N, len(records)
            for k, i, warm, probs in expected:
                d = got[(k, i)]
                assert d.warm == warm and d.stream_id == k
                if warm:
                    np.testing.assert_allclose(d.scores, probs, atol=1e-5)

        assert_that(out["detections"], check)
        dead = out["dead_letter"] | beam.Map(
            lambda r: (
                r.key,
                dict(r.headers)[codecs.HEADER_STAGE],
                b"NaN" in dict(r.headers)[codecs.HEADER_ERROR],
            )
        )
        assert_that(dead, equal_to([(b"b", b"inference", True)]), label="DeadLetters")


def test_idle_timer_clears_state_with_test_stream(weights):
    X = feats(2 * N, 9)
    stream = (
        TestStream()
        .add_elements([rec("a", i, X[i]) for i in range(N)])
        .advance_processing_time(5)  # less than the idle timeout: state kept
        .add_elements([rec("a", N, X[N])])
        # The DirectRunner's test clock starts at epoch 0 while the DoFn sets its timer from the
        # wall clock (Beam Python has no other processing-time source), so jump past wall time.
        .advance_processing_time(
            int(time.time()) + 3600
        )  # idle: the timer clears the stream's state
        .add_elements([rec("a", N + 1, X[N + 1])])
        .advance_watermark_to_infinity()
    )
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    with TestPipeline(runner="BundleBasedDirectRunner", options=opts) as p:
        out = p | stream | ContinualInference(weights=weights, idle_timeout_s=30, idle_timer=True)
        warm = out["detections"] | beam.Map(
            lambda r: (
                codecs.decode_detection(r.value).frame_index,
                codecs.decode_detection(r.value).warm,
            )
        )
        expected = [(i, i >= N - 1) for i in range(N)] + [(N, True), (N + 1, False)]
        assert_that(warm, equal_to(expected))
