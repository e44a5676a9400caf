import json
import struct
import time
import zlib
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from costream.connectors import contract
from costream.connectors.kafka import as_outgoing
from costream.models.state import StateFormatError
from costream.models.zoo import get_model, save_model
from costream.transforms.inference import ContinualInference, ContinualInferenceFn
from costream.transforms.stepper import StreamStepper
from costream.transforms.stored import Stored
from costream.transforms.streams import StreamRegistry

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


def oracle_probs(regular, frames, last_index):
    """Softmax scores of the regular model on the last N frames, the newest with index
    ``last_index``: the positional phase comes from the frame indices (issue 11)."""
    w = torch.from_numpy(np.stack(frames[-N:])).unsqueeze(0)
    with torch.no_grad():
        return torch.softmax(regular(w, start=last_index - N + 1)[0].double(), -1).numpy()


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
                res.detection.scores, oracle_probs(regular, seen[k], i), atol=1e-5
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
            res.detection.scores, oracle_probs(regular, X[8 : 8 + N], 8 + N - 1), atol=1e-5
        )
    else:
        assert "gap_fill" in res.events and res.detection.warm
        filled = history + [X[5], X[5], X[8]]  # sample-and-hold for 6 and 7
        np.testing.assert_allclose(
            res.detection.scores, oracle_probs(regular, filled, 8), atol=1e-5
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


def _detections(rows):
    """(key, detection) of the records WriteToKafka publishes for detection rows."""
    records = [as_outgoing(d) for d in rows]
    return [(r.key.decode(), contract.decode_detection(r.value)) for r in records]


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
            probs = oracle_probs(regular, X[k][: i + 1], i) if t >= N else None
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
        dead = (
            out["dead_letter"]
            | "Wire" >> beam.Map(as_outgoing)
            | beam.Map(
                lambda r: (
                    r.key,
                    dict(r.headers)[contract.HEADER_STAGE],
                    b"NaN" in dict(r.headers)[contract.HEADER_ERROR],
                )
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
    with TestPipeline(runner="BundleBasedDirectRunner", options=_streaming()) as p:
        out = p | stream | ContinualInference(weights=weights, idle_timeout_s=30, idle_timer=True)
        warm = (
            out["detections"]
            | "Wire" >> beam.Map(as_outgoing)
            | beam.Map(
                lambda r: (
                    contract.decode_detection(r.value).frame_index,
                    contract.decode_detection(r.value).warm,
                )
            )
        )
        expected = [(i, i >= N - 1) for i in range(N)] + [(N, True), (N + 1, False)]
        assert_that(warm, equal_to(expected))


def _streaming():
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    return opts


def _expected(regular, X, segments):
    """(frame index, warm, regular-model scores or None) per frame of each segment.

    A segment is (frame indices, the stream's token history before its first frame); tokens
    accumulate along the segment, so a segment with an empty history is a restarted stream.
    """
    out = []
    for frames, history in segments:
        seen = list(history)
        for i in frames:
            seen.append(X[i])
            warm = len(seen) >= N
            out.append((i, warm, oracle_probs(regular, seen, i) if warm else None))
    return out


def _check_detections(expected):
    def check(records):
        got = sorted(_detections(records), key=lambda kd: kd[1].frame_index)
        assert [(k, d.frame_index, d.warm) for k, d in got] == [("a", i, w) for i, w, _ in expected]
        for (_, d), (_, _, probs) in zip(got, expected):
            if probs is not None:
                np.testing.assert_allclose(d.scores, probs, atol=1e-5)

    return check


def _run_gap_pipeline(weights, gap_policy, X, phases, expected):
    stream = TestStream()
    for t, frames in enumerate(phases):  # one bundle per phase, in order
        stream = stream.add_elements([rec("a", i, X[i]) for i in frames]).advance_watermark_to(
            t + 1
        )
    stream = stream.advance_watermark_to_infinity()
    with TestPipeline(runner="BundleBasedDirectRunner", options=_streaming()) as p:
        out = (
            p
            | stream
            | ContinualInference(weights=weights, gap_policy=gap_policy, idle_timer=False)
        )
        assert_that(out["detections"], _check_detections(expected))
        assert_that(out["dead_letter"], equal_to([]), label="NoDeadLetters")


def test_pipeline_gap_reset_restarts_the_stream(regular, weights):
    X = feats(8 + 2 * N, 10)
    before, after = list(range(6)), list(range(8, 8 + 2 * N))  # frames 6 and 7 never arrive
    expected = _expected(regular, X, [(before, []), (after, [])])
    assert [w for i, w, _ in expected if i >= 8] == [j >= N - 1 for j in range(2 * N)]
    _run_gap_pipeline(weights, "reset", X, [before, after], expected)


def test_pipeline_gap_fill_holds_the_last_frame(regular, weights):
    X = feats(30, 11)
    before, after = list(range(6)), [8, 9, 10]  # 6 and 7 missing: held as frame 5
    far = list(range(10 + N + 2, 10 + 2 * N + 2))  # a gap of N + 1 > max_fill = N: reset
    filled = [X[i] for i in before] + [X[5], X[5]]
    expected = _expected(regular, X, [(before, []), (after, filled), (far, [])])
    assert [w for i, w, _ in expected if i in after] == [True] * 3
    _run_gap_pipeline(weights, "fill", X, [before, after, far], expected)


class _Cell:
    """One stream's state cell (ReadModifyWriteState's read/write/clear), held in memory."""

    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class _Timer:
    def set(self, timestamp):
        pass

    def clear(self):
        pass


def test_dofn_model_change_resets_a_stream_state_written_by_another_model(
    regular, weights, tmp_path
):
    # A model change happens when a job is updated or restarted from a snapshot with new weights:
    # the new ContinualInferenceFn reads state the old one wrote. Within one Beam pipeline a state
    # cell belongs to one stateful step, and the embedded runners keep no state across pipelines,
    # so two DoFn instances share one cell here and are called as the runner would call them.
    torch.manual_seed(1)
    other = get_model(
        "oadtr_b2", d_in=D_IN, d_model=16, window=N, heads=2, ffn=16, classes=C
    ).eval()
    other_weights = tmp_path / "other.safetensors"
    save_model(other, other_weights, classes=["bg", "a", "b"])
    old, new = (
        ContinualInferenceFn(weights, idle_timer=False),
        ContinualInferenceFn(str(other_weights), idle_timer=False),
    )
    threads = torch.get_num_threads()
    try:
        old.setup()
        new.setup()
    finally:
        torch.set_num_threads(threads)
    assert old.stepper.model_id != new.stepper.model_id
    X, cell = feats(2 * N + 1, 12), _Cell()

    def step(fn, i):
        (out,) = fn.process(("a", rec("a", i, X[i])), stream=cell, idle=_Timer())
        return contract.decode_detection(as_outgoing(out).value)

    dets = [step(old, i) for i in range(N)]
    assert dets[-1].warm and dets[-1].model == old.stepper.model_id
    np.testing.assert_allclose(dets[-1].scores, oracle_probs(regular, X[:N], N - 1), atol=1e-5)
    dets = [step(new, i) for i in range(N, 2 * N)]  # the stream restarts under the new model
    assert [d.warm for d in dets] == [j >= N - 1 for j in range(N)]
    assert {d.model for d in dets} == {new.stepper.model_id}
    np.testing.assert_allclose(
        dets[-1].scores, oracle_probs(other, X[N : 2 * N], 2 * N - 1), atol=1e-5
    )
    assert Stored.from_bytes(cell.value).model == new.stepper.model_id
    assert not step(old, 2 * N).warm  # and back: the old model does not trust the new one's state


# --- issue 11: results depend only on the frames; stream epochs; bounded state ---------------


def _run(s, frames, blob=None):
    """Step (index, ts, features) frames through one stream; returns (blob, results)."""
    out = []
    for i, ts, x in frames:
        new, res = s.process(blob, "a", i, ts, x)
        blob = new if new is not None else blob
        out.append(res)
    return blob, out


def test_restart_is_invisible_once_n_frames_arrived(regular):
    """A stream whose state is lost at frame 20 (a restart, a gap reset, an idle expiry) equals
    the uninterrupted stream from frame 20 + N - 1 on, at every frame, whatever 20 is mod pe_size.
    (The stepper runs float32, as the pipeline does; float64 exactness: tests/models/test_zoo.py.)"""
    s = stepper(regular)
    X = feats(3 * N + 25, 12)
    frames = [(i, 1000 + i, X[i]) for i in range(len(X))]
    _, whole = _run(s, frames)
    for cut in (20, 21, 23):
        _, before = _run(s, frames[:cut])
        _, after = _run(s, frames[cut:])  # no stored state: a cold restart at frame `cut`
        assert [r.detection.warm for r in after] == [k >= N - 1 for k in range(len(after))]
        for k, r in enumerate(after):
            if k >= N - 1:
                np.testing.assert_allclose(
                    r.detection.scores, whole[cut + k].detection.scores, rtol=1e-5, atol=1e-6
                )


def test_camera_reboot_starts_a_new_epoch_not_duplicates(regular):
    s = stepper(regular)
    X = feats(3 * N + 10, 13)
    blob, _ = _run(s, [(i, 1000 + i, X[i]) for i in range(10)])
    # the camera reboots: counts from 0 again, capture times keep going forward
    blob, res = _run(s, [(i, 5000 + i, X[10 + i]) for i in range(3 * N)], blob)
    assert res[0].events == ["reboot"] and res[0].detection is not None
    assert all(r.detection is not None for r in res)  # nothing dropped as a duplicate
    assert [r.detection.warm for r in res] == [k >= N - 1 for k in range(3 * N)]
    np.testing.assert_allclose(
        res[-1].detection.scores, oracle_probs(regular, X[10 : 10 + 3 * N], 3 * N - 1), atol=1e-5
    )
    # a genuine repeat (same index, same capture time) is still a duplicate
    _, again = _run(s, [(3 * N - 2, 5000 + 3 * N - 2, X[0])], blob)
    assert again[0].events == ["duplicate"] and again[0].detection is None


def test_implausible_forward_jump_starts_a_new_epoch(regular):
    s = StreamStepper(regular.to_continual(), "m@1", ["bg", "a", "b"], max_jump=1000)
    X = feats(10, 14)
    blob, _ = _run(s, [(i, 1000 + i, X[i]) for i in range(5)])
    blob, res = _run(s, [(5 + 1001, 1006, X[5])], blob)
    assert res[0].events == ["jump"] and not res[0].detection.warm
    blob, res = _run(s, [(5 + 1002, 1007, X[6])], blob)
    assert res[0].events == []  # the stream goes on from its new position
    big = 2**63 - 1  # the largest index the contract allows is still stepped
    _, res = _run(s, [(big, 1008, X[7])], blob)
    assert res[0].events == ["jump"] and res[0].detection.frame_index == big


def test_one_dead_lettered_frame_costs_no_warm_frames_by_default(regular):
    s = stepper(regular)  # defaults: gap_policy fill, max_fill min(8, n)
    assert s.gap_policy == "fill" and s.max_fill == min(8, N)
    X = feats(12, 15)
    blob, _ = _run(s, [(i, 1000 + i, X[i]) for i in range(10)])
    with pytest.raises(ValueError, match="NaN"):
        s.process(blob, "a", 10, 1010, np.full(D_IN, np.nan, np.float32))
    _, res = _run(s, [(11, 1011, X[11])], blob)
    assert res[0].events == ["gap", "gap_fill"] and res[0].detection.warm
    held = [X[i] for i in range(10)] + [X[9], X[11]]  # frame 10 holds frame 9's features
    np.testing.assert_allclose(res[0].detection.scores, oracle_probs(regular, held, 11), atol=1e-5)


def test_version_1_state_cells_still_load(regular):
    s = stepper(regular)
    blob, _ = _run(s, [(i, 1000 + i, x) for i, x in enumerate(feats(3, 16))])
    st = Stored.from_bytes(blob)
    assert st.last_ts_ms == 1002
    meta = json.dumps(
        {"model": st.model, "last_index": st.last_index, "last_seen_ms": st.last_seen_ms}
    ).encode()
    f = st.last_features.astype("<f4").tobytes()
    nested = st.state.to_bytes()  # versions 1-2 held the model state as its own blob
    v1 = struct.pack("<4sHII", b"CoSS", 1, len(meta), len(f)) + meta + f + nested
    old = Stored.from_bytes(v1)
    assert old.last_ts_ms is None and old.last_index == 2
    _, res = _run(s, [(1, 5000, feats(1, 17)[0])], v1)  # unknown capture time: a duplicate
    assert res[0].events == ["duplicate"]


def test_version_3_cells_with_a_json_header_still_load(regular):
    s = stepper(regular)
    blob, _ = _run(s, [(i, 1000 + i, x) for i, x in enumerate(feats(3, 21))])
    st = Stored.from_bytes(blob)
    layout, tensors = st.state.layout()
    f = st.last_features.astype("<f4").tobytes()
    meta = {"model": st.model, "last_index": st.last_index, "last_seen_ms": st.last_seen_ms}
    meta |= {"last_ts_ms": st.last_ts_ms, "features": len(f) // 4, "state": layout}
    head = json.dumps(meta).encode()
    body = struct.pack("<4sHI", b"CoSS", 3, len(head)) + head + f + b"".join(tensors)
    v3 = body + struct.pack("<I", zlib.crc32(body))
    assert len(v3) > len(blob)  # the JSON header is the larger one
    old = Stored.from_bytes(v3)
    assert (old.model, old.last_index, old.last_ts_ms) == (st.model, 2, 1002)
    assert Stored.last_seen(v3) == Stored.last_seen(blob) == st.last_seen_ms
    torch.testing.assert_close(old.state.tensors, st.state.tensors)
    _, res = _run(s, [(3, 1003, feats(1, 22)[0])], v3)  # a v3 cell steps on
    assert res[0].events == [] and res[0].detection.frame_index == 3
    # and a version-1 cell (no capture time) round-trips through the binary header
    none_ts = Stored(st.model, 2, 5, st.last_features, st.state, None)
    assert Stored.from_bytes(none_ts.to_bytes()).last_ts_ms is None


def test_version_4_cells_with_a_zlib_crc_still_load(regular):
    s = stepper(regular)
    blob, _ = _run(s, [(i, 1000 + i, x) for i, x in enumerate(feats(3, 23))])
    assert struct.unpack_from("<4sH", blob) == (b"CoSS", 5)
    body = b"CoSS" + struct.pack("<H", 4) + blob[6:-4]  # the same cell, zlib's CRC32
    v4 = body + struct.pack("<I", zlib.crc32(body))
    st, old = Stored.from_bytes(blob), Stored.from_bytes(v4)
    assert (old.model, old.last_index, old.last_ts_ms) == (st.model, 2, 1002)
    assert Stored.last_seen(v4) == Stored.last_seen(blob) == st.last_seen_ms
    torch.testing.assert_close(old.state.tensors, st.state.tensors)
    _, res = _run(s, [(3, 1003, feats(1, 24)[0])], v4)  # a v4 cell steps on, written as v5
    assert res[0].events == [] and res[0].detection.frame_index == 3
    bad = bytearray(v4)
    bad[len(v4) // 2] ^= 1
    with pytest.raises(StateFormatError, match="CRC32"):
        Stored.from_bytes(bytes(bad))
    with pytest.raises(StateFormatError, match="CRC-32C"):  # the checksums are not swapped
        Stored.from_bytes(b"CoSS" + struct.pack("<H", 5) + v4[6:])


def test_stream_registry_sweeps_oldest_first():
    reg = StreamRegistry()
    for k, t in [("a", 0), ("b", 10), ("c", 20)]:
        reg.seen(k, t, 100)
    reg.seen("a", 30, 150)  # a stepped again: now the newest
    assert len(reg) == 3 and reg.state_bytes == 350
    assert reg.expired(now_ms=40, ttl_ms=15, limit=10) == ["b", "c"]
    assert len(reg) == 1 and reg.state_bytes == 150
    assert reg.expired(now_ms=40, ttl_ms=15, limit=10) == []
    reg.forget("a")
    assert len(reg) == 0 and reg.state_bytes == 0


def test_idle_streams_are_swept_on_the_embedded_runner(weights):
    """Streams that never send another frame are cleared by the sweep (the FnApiRunner has no
    usable timers, and the TTL check alone needs the stream's next frame)."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    X = feats(1, 18)[0]
    streams = 60

    def slow(r):
        time.sleep(0.01)  # ~0.6 s of wall time across the run: several sweeps
        return r

    inf = ContinualInference(weights=weights, idle_timeout_s=0.05, idle_timer=False)
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (
        p
        | beam.Create([rec(f"s{k}", 0, X) for k in range(streams)])
        | beam.Map(slow)
        | _sweeping(inf)
    )
    result = p.run()
    result.wait_until_finish()
    got = {
        r.key.metric.name: r.committed
        for r in result.metrics().query(MetricsFilter().with_namespace("costream"))["counters"]
    }
    assert got["frames_in"] == streams and got["detections_out"] == streams
    assert got["idle_cleared"] >= streams // 2, got  # most streams were swept while it ran
    reg = StreamRegistry.named(inf.fn.registry)
    assert len(reg) <= streams - got["idle_cleared"]


def _sweeping(inf):
    """The transform with a fast sweep (the default sweeps once a second)."""
    inf.sweep_every_s = 0.02
    return inf


def test_version_2_cells_load_and_one_crc_guards_the_whole_cell(regular):
    s = stepper(regular)
    blob, _ = _run(s, [(i, 1000 + i, x) for i, x in enumerate(feats(3, 19))])
    st = Stored.from_bytes(blob)
    meta = json.dumps(
        {
            "model": st.model,
            "last_index": st.last_index,
            "last_seen_ms": st.last_seen_ms,
            "last_ts_ms": st.last_ts_ms,
        }
    ).encode()
    f = st.last_features.astype("<f4").tobytes()
    v2 = struct.pack("<4sHII", b"CoSS", 2, len(meta), len(f)) + meta + f + st.state.to_bytes()
    old = Stored.from_bytes(v2)
    assert (old.last_index, old.last_ts_ms) == (2, 1002)
    assert Stored.last_seen(v2) == Stored.last_seen(blob) == st.last_seen_ms
    torch.testing.assert_close(old.state.tensors, st.state.tensors)
    _, res = _run(s, [(3, 1003, feats(1, 20)[0])], v2)  # a v2 cell steps on
    assert res[0].events == [] and res[0].detection.frame_index == 3
    # one CRC over the cell: a flipped bit in the features, the header or a tensor is refused
    for pos in (20, len(blob) // 2, len(blob) - 9):
        bad = bytearray(blob)
        bad[pos] ^= 1
        with pytest.raises(StateFormatError, match="CRC-32C"):
            Stored.from_bytes(bytes(bad))
