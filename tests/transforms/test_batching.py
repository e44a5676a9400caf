"""Cross-stream batching: ``StreamStepper.process_many`` and ``ContinualInference(batch_streams=True)``.

Exactness: whatever the batch composition (streams at different positions, several frames of one
stream in a batch, duplicates, gaps filled or reset, reboots, refused frames), batched
detections equal the one-stream path's and the regular model's (1e-5 in float32, 1e-10 in
float64), over at least 3n steps.
"""

import random
import struct
import time
import zlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from costream.models.state import StateFormatError
from costream.models.zoo import get_model, save_model
from costream.transforms import counters
from costream.transforms.inference import ContinualInference
from costream.transforms.stepper import Frame, StreamStepper
from costream.transforms.stored import ShardCell, Stored
from costream.transforms.streams import StreamRegistry, shard_key

from .test_inference import _Cell, _Timer, rec

D_IN, N, C = 6, 4, 3


def make_regular(dtype=torch.float32, blocks=2):
    torch.manual_seed(0)
    m = get_model(
        f"oadtr_b{blocks}", d_in=D_IN, d_model=16, window=N, heads=2, ffn=16, classes=C
    ).eval()
    return m.to(dtype)


@pytest.fixture(scope="module")
def regular():
    return make_regular()


@pytest.fixture(scope="module")
def weights(regular, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_model(regular, path, classes=["bg", "a", "b"])
    return str(path)


def stepper(regular, **kw):
    return StreamStepper(regular.to_continual(), "m@1", ["bg", "a", "b"], **kw)


def scripted_frames(seed: int, streams: int = 5, steps: int = 4 * N):
    """Frames of several streams at different positions, interleaved at random, with every event:
    duplicates, a filled gap, a reset gap, a reboot and a poisoned frame."""
    rng = np.random.default_rng(seed)
    per: dict[str, list[Frame]] = {}
    for k in range(streams):
        sid = f"s{k}"
        start = [0, 7, 1_000_003, 2**40, 3][k % 5]
        idx = list(range(start, start + steps))
        frames = [
            Frame(sid, i, 10_000 + i, rng.standard_normal(D_IN).astype(np.float32)) for i in idx
        ]
        if k == 1:  # a duplicate and a one-frame gap (filled)
            frames.insert(6, frames[3])
            del frames[9]
        if k == 2:  # a gap longer than max_fill: resets
            del frames[5 : 5 + N + 2]
        if k == 3:  # a reboot: indices start again with newer capture times
            frames += [
                Frame(sid, i, 10**9 + i, rng.standard_normal(D_IN).astype(np.float32))
                for i in range(N + 1)
            ]
        if k == 4:  # a poisoned frame (refused, leaves a one-frame gap)
            frames[8] = Frame(sid, frames[8].frame_index, frames[8].ts_ms, np.full(D_IN, np.nan))
        per[sid] = frames
    out: list[Frame] = []
    queues = {k: list(v) for k, v in per.items()}
    r = random.Random(seed)
    while queues:
        sid = r.choice(sorted(queues))
        out.append(queues[sid].pop(0))
        if not queues[sid]:
            del queues[sid]
    return out


def run_one_by_one(s, frames):
    store: dict[str, bytes] = {}
    results = []
    for f in frames:
        try:
            blob, res = s.process(
                store.get(f.stream_id), f.stream_id, f.frame_index, f.ts_ms, f.features, now_ms=0
            )
        except ValueError as e:
            results.append(("error", str(e)))
            continue
        if blob is not None:
            store[f.stream_id] = blob
        results.append(res)
    return store, results


def run_batched(s, frames, sizes, max_rows=None):
    store: dict[str, bytes] = {}
    results = []
    pos = 0
    while pos < len(frames):
        size = sizes[len(results) % len(sizes)] if isinstance(sizes, list) else sizes
        batch = frames[pos : pos + size]
        pos += size
        changed, res = s.process_many(store, batch, now_ms=0, max_rows=max_rows)
        store.update(changed)
        results.extend(res)
    return store, results


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("blocks", [1, 2])
def test_batched_equals_one_by_one_whatever_the_batch(dtype, tol, blocks):
    regular = make_regular(dtype, blocks)
    s = stepper(regular)
    frames = scripted_frames(seed=blocks)
    _, ref = run_one_by_one(s, frames)
    # groups of 1, 3, ... frames; a group's rounds stepped whole or max_rows rows at a time
    for sizes, rows in ((1, None), (3, None), (7, None), (64, None), ([1, 5, 2, 11], None),
                        (64, 1), (64, 2), (7, 3)):  # fmt: skip
        _, got = run_batched(s, frames, sizes, rows)
        assert len(got) == len(ref) == len(frames)
        checked = 0
        for f, a, b in zip(frames, ref, got):
            if isinstance(a, tuple):  # refused one by one: refused in the batch too
                assert b.error is not None and b.detection is None, (f, b)
                continue
            assert b.error is None and a.events == b.events, (f, a.events, b.events)
            if a.detection is None:
                assert b.detection is None
                continue
            da, db = a.detection, b.detection
            assert (da.stream_id, da.frame_index, da.warm) == (
                db.stream_id,
                db.frame_index,
                db.warm,
            )
            np.testing.assert_allclose(db.scores, da.scores, rtol=tol, atol=tol)
            checked += 1
        assert checked >= 5 * 3 * N - 2 * N  # at least 3n steps per stream on average


def test_batched_warm_detections_equal_the_regular_model(regular):
    """The oracle itself: every warm batched detection equals the regular model on the stream's
    last n frames (sample-and-hold fills included), with indices far apart."""
    s = stepper(regular)
    frames = scripted_frames(seed=5)
    _, got = run_batched(s, frames, 9)
    history: dict[str, list] = {}
    last: dict[str, int] = {}
    checked = 0
    for f, res in zip(frames, got):
        if res.error is not None or res.detection is None:
            continue
        h = history.setdefault(f.stream_id, [])
        if any(e in res.events for e in ("gap_reset", "reboot")):
            h.clear()
        if "gap_fill" in res.events:
            h.extend([h[-1]] * (f.frame_index - last[f.stream_id] - 1))
        h.append(f.features)
        last[f.stream_id] = f.frame_index
        d = res.detection
        assert d.warm == (len(h) >= N)
        if d.warm:
            w = torch.from_numpy(np.stack(h[-N:])).unsqueeze(0)
            with torch.no_grad():
                want = torch.softmax(regular(w, start=f.frame_index - N + 1)[0].double(), -1)
            np.testing.assert_allclose(d.scores, want.numpy(), atol=1e-5)
            checked += 1
    assert checked > 4 * 2 * N


def test_refused_frames_stay_alone_and_unreadable_cells_restart_their_stream(regular):
    s = stepper(regular)
    X = np.random.default_rng(3).standard_normal((3, D_IN)).astype(np.float32)
    store = {"bad": b"CoSS-not-a-cell"}
    frames = [
        Frame("a", 0, 1, X[0]),
        Frame("bad", 0, 1, X[1]),
        Frame("a", 1, 2, np.zeros(D_IN + 1, np.float32)),  # wrong size
        Frame("b", 0, 1, X[2]),
        Frame("a", 2, 3, X[1]),  # a gap of one (filled)
    ]
    changed, res = s.process_many(store, frames, now_ms=0)
    assert [r.error is None for r in res] == [True, True, False, True, True]
    assert res[1].events == ["state_unreadable"] and not res[1].detection.warm
    assert set(changed) == {"a", "b", "bad"}  # the unreadable cell is replaced: "bad" goes on
    assert "gap_fill" in res[4].events and res[4].detection.frame_index == 2
    # frame by frame (the one-stream path) the same
    one = [s.process(store.get(f.stream_id), f.stream_id, f.frame_index, f.ts_ms, f.features)
           for f in frames[1:2]]  # fmt: skip
    assert one[0][1].events == ["state_unreadable"] and Stored.from_bytes(one[0][0]).last_index == 0


def test_shard_cell_roundtrip_and_damage():
    cells = {"cam-1": b"x" * 10, "ü-2": b"", "c": b"\x00" * 300}
    blob = ShardCell.to_bytes(cells)
    assert ShardCell.from_bytes(blob) == cells and list(ShardCell.from_bytes(blob)) == list(cells)
    assert ShardCell.from_bytes(None) == {} and ShardCell.from_bytes(b"") == {}
    for bad in (blob[:-1], blob[:10], blob[:20] + b"\xff" + blob[21:], b"CoSS" + blob[4:]):
        with pytest.raises(StateFormatError):
            ShardCell.from_bytes(bad)
    # version 1 (one CRC over everything) still loads
    v1 = struct.pack("<4sHI", b"CoSh", 1, len(cells))
    for sid, cell in cells.items():
        v1 += struct.pack("<HI", len(sid.encode()), len(cell)) + sid.encode() + cell
    v1 += struct.pack("<I", zlib.crc32(v1))
    assert ShardCell.from_bytes(v1) == cells
    with pytest.raises(StateFormatError, match="CRC32"):
        ShardCell.from_bytes(v1[:12] + b"\xff" + v1[13:])
    assert shard_key("cam-1", 16) == shard_key("cam-1", 16)
    assert {shard_key(f"s{i}", 4) for i in range(64)} == {"0", "1", "2", "3"}


def test_a_damaged_cell_in_a_shard_fails_alone(regular):
    s = stepper(regular)
    X = np.random.default_rng(4).standard_normal((3, D_IN)).astype(np.float32)
    store: dict = {}
    for i in range(3):
        changed, _ = s.process_many(store, [Frame(k, i, i, X[i]) for k in "abc"], now_ms=0)
        store.update(changed)
    blob = bytearray(ShardCell.to_bytes(store))
    blob[len(blob) - len(store["c"]) - 100] ^= 1  # inside stream b's cell (c's is last)
    cells = ShardCell.from_bytes(bytes(blob))  # the index is intact
    with pytest.raises(StateFormatError, match="CRC-32C"):
        Stored.from_bytes(cells["b"])
    assert Stored.from_bytes(cells["a"]).last_index == Stored.from_bytes(cells["c"]).last_index == 2
    _, res = s.process_many(cells, [Frame(k, 3, 3, X[0]) for k in "abc"], now_ms=0)
    assert [r.events for r in res] == [[], ["state_unreadable"], []]
    assert [r.detection.warm for r in res] == [True, False, True]  # b warms up again


@pytest.mark.parametrize("state_dtype", ["float16", "bfloat16"])
def test_half_precision_state_halves_the_bytes(regular, state_dtype):
    full, half = stepper(regular), stepper(regular, state_dtype=state_dtype)
    frames = [f for f in scripted_frames(seed=7, streams=3) if np.isfinite(f.features).all()]
    store_f, ref = run_batched(full, frames, 5)
    store_h, got = run_batched(half, frames, 5)
    worst = 0.0
    for a, b in zip(ref, got):
        if a.detection is not None:
            worst = max(
                worst, float(np.abs(np.subtract(a.detection.scores, b.detection.scores)).max())
            )
    assert 0 < worst < 0.05, worst  # rounded, but close
    for sid in store_f:
        bf, bh = store_f[sid], store_h[sid]
        sf, sh = (Stored.from_bytes(b).state for b in (bf, bh))
        floats = [k for k, v in sf.tensors.items() if v.is_floating_point()]
        assert floats and all(sh[k].dtype == getattr(torch, state_dtype) for k in floats)
        saved = sum(sf[k].numel() * 2 for k in floats)  # 4 -> 2 bytes per value
        # the header's dtype codes are one byte whatever the dtype: exactly the values shrink
        assert len(bf) - len(bh) == saved, (len(bf), len(bh), saved)


@pytest.mark.parametrize("state_dtype", ["float32", "float16"])
def test_demo_cell_within_5_percent_of_the_state_formula(state_dtype):
    """The stored cell of the shipped demo model against docs/continual-attention.md's formula
    (state elements x dtype size + 8 for the counter + 4 D_in for the held features)."""
    from costream.transforms.stepper import load_stepper

    demo = Path(__file__).resolve().parents[2] / "pipelines" / "assets" / "demo_model.safetensors"
    st = load_stepper(str(demo), state_dtype=state_dtype)
    cell = None
    x = np.ones(st.d_in, np.float32)
    for i in range(st.model.window + 2):
        cell, _ = st.process(cell, "camera-17", i, 1000 + i, x, now_ms=i)
    state = Stored.from_bytes(cell).state
    item = torch.empty(0, dtype=getattr(torch, state_dtype)).element_size()
    formula = sum(v.numel() for v in state.tensors.values()) * item + 8 + 4 * st.d_in
    assert formula < len(cell) <= 1.05 * formula, (len(cell), formula)


def _detections(records):
    return [(r.stream_id, r) for r in records]


def test_pipeline_batched_equals_one_stream_path(regular, weights):
    rng = np.random.default_rng(11)
    X = {f"s{k}": rng.standard_normal((3 * N, D_IN)).astype(np.float32) for k in range(5)}
    elements = []
    for i in range(3 * N):
        for k in X:
            elements.append(rec(k, i, X[k][i]))
        if i == 5:
            elements.append(rec("s0", 3, X["s0"][3]))  # duplicate
            elements.append(rec("s1", 6, np.full(D_IN, np.nan, np.float32)))  # poisoned
    s = stepper(regular)
    _, ref = run_one_by_one(
        s, [Frame(e.stream_id, e.frame_index, e.ts_ms, e.features) for e in elements]
    )
    want = {
        (r.detection.stream_id, r.detection.frame_index): r.detection
        for r in ref
        if not isinstance(r, tuple) and r.detection is not None
    }
    assert len(want) == 5 * 3 * N

    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    # the embedded runner (the batch flush is a processing-time timer, which the bundle-based
    # DirectRunner fires after its downstream grouping has completed in batch mode)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = (
            p
            | beam.Create(elements)
            | ContinualInference(
                weights=weights, idle_timer=False, batch_streams=True, shards=2, max_batch=4
            )
        )

        def check(records):
            got = {(d.stream_id, d.frame_index): d for d in records}
            assert len(got) == len(records) == len(want), len(records)
            for k, d in got.items():
                w = want[k]
                assert d.warm == w.warm
                np.testing.assert_allclose(d.scores, w.scores, rtol=1e-5, atol=1e-6)

        assert_that(out["detections"], check)
        dead = out["dead_letter"] | beam.Map(lambda d: d.key)
        assert_that(dead, lambda got: got == [b"s1"] or pytest.fail(str(got)), label="Dead")


def test_batched_idle_streams_are_swept_on_the_embedded_runner(weights):
    """Streams idle longer than the timeout are swept by the sweep tokens of later bundles."""
    X = np.random.default_rng(18).standard_normal(D_IN).astype(np.float32)
    streams, per_bundle = 60, 10

    def slow(r):
        time.sleep(0.01)  # a bundle of 10 takes 0.1 s, longer than the idle timeout
        return r

    stream = TestStream()
    for lo in range(0, streams, per_bundle):  # each add_elements is a bundle of its own
        stream = stream.add_elements([rec(f"s{k}", 0, X) for k in range(lo, lo + per_bundle)])
    stream = stream.advance_watermark_to_infinity()
    inf = ContinualInference(
        weights=weights,
        idle_timeout_s=0.05,
        idle_timer=False,
        batch_streams=True,
        shards=4,
        max_batch=3,  # the most rows of a step: a shard's group of streams in steps of 3
    )
    inf.sweep_every_s = 0.02
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    before = counters.snapshot()  # this runner's metric results hold only its first bundle's
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=opts) as p:
        out = p | stream | beam.Map(slow) | inf
        ids = out["detections"] | beam.Map(lambda d: d.stream_id)
        assert_that(ids, equal_to([f"s{k}" for k in range(streams)]))
    got = {k: v - before.get(k, 0) for k, v in counters.snapshot().items()}
    assert got["frames_in"] == streams and got["detections_out"] == streams, got
    assert got["idle_cleared"] >= streams // 2, got
    assert len(StreamRegistry.named(inf.fn.registry)) <= streams - got["idle_cleared"]


@pytest.mark.parametrize("max_batch", [3, 7, 1000])
def test_counters_of_timer_fired_flushes_reach_the_pipeline_result(weights, max_batch):
    """Groups cut by size and at the end of the bundle, mixed: every frame counted once."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    X = np.random.default_rng(19).standard_normal((12, D_IN)).astype(np.float32)
    frames = [rec(f"s{k}", i, X[i]) for i in range(12) for k in range(5)]
    inf = ContinualInference(
        weights=weights, idle_timer=False, batch_streams=True, shards=2, max_batch=max_batch,
        max_delay_ms=1e7,
    )  # fmt: skip
    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create(frames) | inf
    _ = (
        out["detections"]
        | beam.combiners.Count.Globally()
        | beam.Map(lambda n: n == len(frames) or pytest.fail(f"{n} detections"))
    )
    result = p.run()
    result.wait_until_finish()
    got = {
        r.key.metric.name: r.committed
        for r in result.metrics().query(MetricsFilter().with_namespace("costream"))["counters"]
    }
    assert got["frames_in"] == got["detections_out"] == len(frames), got
    dist = result.metrics().query(MetricsFilter().with_name("frame_us"))["distributions"]
    assert sum(d.committed.count for d in dist) == len(frames)


def test_batching_options_are_checked(weights):
    for bad in ({"shards": 0}, {"max_batch": 0}, {"max_delay_ms": -1}, {"max_delay_ms": "x"}):
        with pytest.raises(ValueError):
            ContinualInference(weights=weights, batch_streams=True, **bad)
    with pytest.raises(ValueError, match="state_dtype"):
        ContinualInference(weights=weights, state_dtype="int8")


def test_groups_are_cut_by_size_by_delay_and_at_the_end_of_the_bundle():
    """Under traffic a frame waits at most about max_delay_ms: the next frame's arrival sends
    its group on (on Flink a stage's output moves on during its bundle), and the bundle's end
    sends the rest; each group holds one shard's frames, in arrival order."""
    from apache_beam.transforms.window import GlobalWindow

    from costream.transforms.batching import GroupFrames

    g = GroupFrames("test-groups", None, 1.0, shards=2, max_batch=3, max_delay_ms=20)
    g.setup()
    g.start_bundle()
    x = np.zeros(D_IN, np.float32)
    win = GlobalWindow()

    def feed(*ids, ts=0):
        out = []
        for sid, i in ids:
            out += list(g.process(rec(sid, i, x), wv=WindowedValue(None, Timestamp(ts), (win,))))
        return [(wv.value[0], [(r.stream_id, r.frame_index) for r in wv.value[1]]) for wv in out]

    ids = [f"s{i}" for i in range(8)]
    key = {s: shard_key(s, 2) for s in ids}
    same = next(s for s in ids[1:] if key[s] == key["s0"])
    other = next(s for s in ids[1:] if key[s] != key["s0"])
    # by size: the third frame of a shard sends its group
    assert feed(("s0", 0), (other, 0), (same, 0)) == []
    assert feed(("s0", 1)) == [(key["s0"], [("s0", 0), (same, 0), ("s0", 1)])]
    # by delay: a frame 30 ms after its group's first one sends the group, itself included
    time.sleep(0.03)
    assert feed((other, 1), ts=5) == [(key[other], [(other, 0), (other, 1)])]
    # the end of the bundle: what is left, with the latest timestamp of its frames
    assert feed(("s0", 2), ts=7) == []
    (last,) = list(g.finish_bundle())
    assert last.value[0] == key["s0"] and [r.frame_index for r in last.value[1]] == [2]
    assert last.timestamp == Timestamp(7) and last.windows == (win,)


def test_a_frame_in_two_windows_joins_a_group_in_each():
    """Groups are per shard and window, as when Beam called the step once per window."""
    from apache_beam.transforms.window import IntervalWindow

    from costream.transforms.batching import GroupFrames

    g = GroupFrames("test-windows", None, 1.0, shards=1, max_batch=None, max_delay_ms=None)
    g.setup()
    g.start_bundle()
    x = np.zeros(D_IN, np.float32)
    a, b = IntervalWindow(0, 10), IntervalWindow(5, 15)
    assert list(g.process(rec("s0", 0, x), wv=WindowedValue(None, Timestamp(6), (a, b)))) == []
    assert list(g.process(rec("s0", 1, x), wv=WindowedValue(None, Timestamp(8), (b,)))) == []
    groups = {wv.windows: (wv.timestamp, [r.frame_index for r in wv.value[1]])
              for wv in g.finish_bundle()}  # fmt: skip
    assert groups == {(a,): (Timestamp(6), [0]), (b,): (Timestamp(8), [0, 1])}


def test_auto_delay_is_the_bundle_in_process_and_20_ms_elsewhere():
    from costream.transforms.inference import AUTO_DELAY_MS, group_delay_ms

    assert group_delay_ms("auto", in_process=True) is None
    assert group_delay_ms("auto", in_process=False) == AUTO_DELAY_MS == 20.0
    for here in (True, False):  # a number or null is kept on every runner
        assert group_delay_ms(45, here) == 45.0 and group_delay_ms(None, here) is None


@pytest.mark.parametrize("delay_ms", [None, 1e7, 45, "auto"])
def test_in_process_groups_are_cut_by_delay_not_by_size(weights, delay_ms):
    """In process a group cut by size would hold one partition's streams (the reader's bundle
    holds its partitions one after the other): there groups are cut by delay (the stateful
    step is fused with the reader, so a cut group steps at once) and at the bundle's end."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    X = np.random.default_rng(21).standard_normal(D_IN).astype(np.float32)

    def slow(r):
        time.sleep(0.03)  # frames 30 ms apart, one shard
        return r

    inf = ContinualInference(
        weights=weights, idle_timer=False, batch_streams=True, shards=1, max_delay_ms=delay_ms,
        max_batch=5,
    )  # fmt: skip
    p = beam.Pipeline(runner=FnApiRunner())
    out = p | beam.Create([rec(f"s{k}", 0, X) for k in range(12)]) | beam.Map(slow) | inf
    assert_that(out["detections"], lambda got: len(got) == 12 or pytest.fail(str(len(got))))
    result = p.run()
    result.wait_until_finish()
    dist = result.metrics().query(MetricsFilter().with_name("batch_frames"))["distributions"]
    sizes = [d.committed for d in dist]
    assert len(sizes) == 1 and sizes[0].sum == 12, sizes
    if delay_ms in (None, "auto") or delay_ms > 1e6:  # no cut: the bundle's 12 frames, one group
        assert (sizes[0].count, sizes[0].max) == (1, 12), sizes
    else:  # a frame 45 ms or more after its group's first one sends the group on: 2-3 frames
        assert sizes[0].count >= 4 and sizes[0].max <= 3, sizes


def test_frames_buffered_by_an_earlier_version_are_stepped_when_their_timer_fires(weights):
    """Savepoints of the first batched layout hold a bag of frames and a flush timer: after a
    restore the timer steps them into the shard's cell, and nothing is left buffered."""
    from costream.transforms.batching import BatchedInferenceFn

    X = np.random.default_rng(23).standard_normal((3, D_IN)).astype(np.float32)
    fn = BatchedInferenceFn(weights, "fill", None, 60.0, True, 2**32)
    fn.setup()
    fn.start_bundle()
    buffered = [rec(f"s{k}", i, X[i]) for i in range(3) for k in range(2)]
    shard, buffer, pending = _Cell(), _Cell(), _Cell()
    buffer.write(list(buffered))
    pending.write(b"\x06\x00\x00\x00")
    out = list(fn.on_flush(shard, buffer, pending, _Timer()))
    fn.finish_bundle()
    assert sorted((d.stream_id, d.frame_index) for d in out) == [
        (f"s{k}", i) for k in range(2) for i in range(3)
    ]
    assert buffer.value is None and pending.value is None
    assert set(ShardCell.from_bytes(shard.value)) == {"s0", "s1"}
    empty = _Cell()
    empty.write([])
    assert not list(fn.on_flush(shard, empty, _Cell(), _Timer()))  # nothing left to step


def test_rows_are_checked_at_once_as_each_one_alone(regular):
    """check_rows gives check_features' row or error for every frame, whatever the mix."""
    st = stepper(regular)
    rng = np.random.default_rng(3)
    good = [rng.standard_normal(D_IN).astype(np.float32) for _ in range(5)]
    nan = good[0].copy()
    nan[2] = np.nan
    mixes = [
        good,
        [*good[:2], nan, good[3]],  # one not finite
        [*good[:2], np.zeros(D_IN + 1, np.float32)],  # one of another width
        [g.astype(np.float64) for g in good],  # cast like check_features
        [np.arange(D_IN, dtype=np.int64), good[1]],  # stacks as float64: row by row
        [g.reshape(1, -1) for g in good],  # (1, D): flattened
        [list(map(float, good[0])), good[1]],
        [np.full(D_IN, np.inf, np.float32)],
        [],
    ]
    for rows in mixes:
        got = st.check_rows(rows)
        assert len(got) == len(rows)
        for r, g in zip(rows, got, strict=True):
            try:
                want = st.check_features(r)
            except ValueError as e:
                assert isinstance(g, ValueError) and str(g) == str(e)
            else:
                assert not isinstance(g, ValueError)
                assert g.dtype == np.float32 and g.shape == (D_IN,)
                np.testing.assert_array_equal(g, want)
