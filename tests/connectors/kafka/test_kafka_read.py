"""ReadFromKafka against the embedded broker (real broker, uuid-named topics).

Every streaming pipeline here stops by itself: ``max_records`` bounds each partition, or
``stop_after_idle_s`` ends a partition after a short quiet spell.
"""

import hashlib
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from kafka import KafkaProducer
from kafka_helpers import (
    AppendJsonLines,
    CrashAfter,
    committed,
    header,
    load,
    produce,
    reader,
    run_read,
    stream_records,
)

from costream.connectors import contract
from costream.connectors.kafka import CLIENTS, ReadFromKafka, offsets
from costream.connectors.kafka.offsets import UNBOUNDED, _PartitionDescriptor
from costream.connectors.kafka.read import _ReadPartitionFn
from costream.connectors.kafka.restriction import _OffsetRestrictionProvider, _WatermarkProvider
from costream.connectors.sources import open_source
from costream.connectors.synthetic import write_synthetic_video

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client", CLIENTS)
def test_produced_video_arrives_once_in_order_with_headers(
    kafka_broker, kafka_topics, tmp_path, client
):
    topic = kafka_topics()
    path = tmp_path / "clip.mp4"
    write_synthetic_video(path, num_frames=24, size=(64, 48), fps=10.0)
    start_ms = int(time.time() * 1000)
    sent = produce(
        kafka_broker.bootstrap,
        topic,
        [r for r, _ in open_source(str(path), "cam-1", start_ms=start_ms).records],
    )
    assert len(sent) == 24

    out = run_read(
        reader(client)(kafka_broker.bootstrap, topic, max_records=24), tmp_path / "out.jsonl"
    )

    assert [int(header(o, contract.HEADER_FRAME_INDEX)) for o in out] == list(range(24))
    assert [o["offset"] for o in out] == list(range(24))
    for o, rec in zip(out, sent):
        assert o["key"] == "cam-1"
        assert [(k, v.encode("latin-1")) for k, v in o["headers"]] == rec.headers
        assert o["sha"] == hashlib.sha1(rec.value).hexdigest()
        ts = int(header(o, contract.HEADER_TS_MS))
        assert o["timestamp_ms"] == ts and o["event_ms"] == ts  # event time = record timestamp


@pytest.mark.parametrize("client", CLIENTS)
def test_streams_on_several_partitions_interleave_in_order(
    kafka_broker, kafka_topics, tmp_path, client
):
    topic = kafka_topics(partitions=3)
    now = int(time.time() * 1000)
    streams = {"a": 0, "b": 0, "c": 1, "d": 2}  # two streams share partition 0
    per_stream = {s: stream_records(s, 15, now) for s in streams}
    interleaved = [per_stream[s][i] for i in range(15) for s in streams]
    produce(
        kafka_broker.bootstrap, topic, interleaved, partition_of=lambda r: streams[r.key.decode()]
    )

    read = reader(client)(
        kafka_broker.bootstrap, topic, stop_after_idle_s=1.0, max_records_per_bundle=7
    )
    t0 = time.monotonic()
    out = run_read(read, tmp_path / "out.jsonl")
    assert time.monotonic() - t0 < 30

    assert len(out) == 60
    assert len({(o["partition"], o["offset"]) for o in out}) == 60  # every record once
    for s, partition in streams.items():
        mine = [o for o in out if o["key"] == s]
        assert {o["partition"] for o in mine} == {partition}
        assert [int(header(o, contract.HEADER_FRAME_INDEX)) for o in mine] == list(range(15))
    # records of partition 0 keep the interleaving of streams a and b (offset order)
    p0 = [o for o in out if o["partition"] == 0]
    assert [o["offset"] for o in p0] == list(range(30))
    assert [o["key"] for o in p0[:4]] == ["a", "b", "a", "b"]


def test_a_step_of_the_wall_clock_does_not_end_an_idle_read(
    kafka_broker, kafka_topics, tmp_path, monkeypatch
):
    """``stop_after_idle_s`` counts quiet seconds on the monotonic clock, not the wall clock."""
    from costream.connectors.kafka import read as read_module

    topic, real, checks = kafka_topics(), time, threading.Event()

    class SteppedClock:  # the wall clock as the reader sees it: a minute ahead once it looked
        monotonic, sleep = staticmethod(real.monotonic), staticmethod(real.sleep)

        @staticmethod
        def time():
            checks.set()
            return real.time() + 60

    monkeypatch.setattr(read_module, "time", SteppedClock)

    def late():  # frames come only after the reader has read the (stepped) clock
        checks.wait(60)
        produce(kafka_broker.bootstrap, topic, stream_records("s", 5, int(real.time() * 1000)))

    producer = threading.Thread(target=late, daemon=True)
    producer.start()
    out = run_read(
        # quiet for 6 s: room for the producer to connect and send on a busy machine; the old
        # reader stopped at once (a minute of quiet on the stepped clock)
        ReadFromKafka(kafka_broker.bootstrap, topic, start="earliest", stop_after_idle_s=6.0),
        tmp_path / "out.jsonl",
    )
    producer.join(timeout=60)
    assert checks.is_set()
    assert [o["offset"] for o in out] == list(range(5))


@pytest.mark.parametrize("client", CLIENTS)
def test_restart_from_committed_offsets_loses_nothing(kafka_broker, kafka_topics, tmp_path, client):
    bs, topic, group = kafka_broker.bootstrap, kafka_topics(), f"g-{time.time_ns()}"
    produce(bs, topic, stream_records("s", 50, int(time.time() * 1000)))

    first = run_read(
        reader(client)(bs, topic, start="committed", group_id=group, max_records=20),
        tmp_path / "1.jsonl",
    )
    assert [o["offset"] for o in first] == list(range(20))
    # the finalizer of the last bundle committed "next offset to read"
    assert committed(bs, group, topic) == 20

    second = run_read(
        reader(client)(bs, topic, start="committed", group_id=group, stop_after_idle_s=1.0),
        tmp_path / "2.jsonl",
    )
    assert [o["offset"] for o in second] == list(range(20, 50))
    assert committed(bs, group, topic) == 50


@pytest.mark.parametrize("client", CLIENTS)
def test_crash_before_commit_rereads_at_most_one_bundle(
    kafka_broker, kafka_topics, tmp_path, client
):
    bs, topic, group = kafka_broker.bootstrap, kafka_topics(), f"g-{time.time_ns()}"
    produce(bs, topic, stream_records("s", 60, int(time.time() * 1000)))
    per_bundle = 10

    def read():
        return reader(client)(bs, topic, start="committed", group_id=group, stop_after_idle_s=1.0,
                             max_records_per_bundle=per_bundle)  # fmt: skip

    with pytest.raises(Exception, match="simulated crash after 25 records"):
        run_read(read(), tmp_path / "1.jsonl", then=beam.ParDo(CrashAfter(25)))
    first = load(tmp_path / "1.jsonl")
    # bundles of 10 ([0,10), [10,20)) were finalized; the one holding offset 25 failed and
    # committed nothing
    c = committed(bs, group, topic)
    assert 25 - per_bundle < c <= 25  # 20 on the FnApiRunner: it finalizes every bundle
    assert [o["offset"] for o in first] == list(range(26))

    second = run_read(read(), tmp_path / "2.jsonl")
    assert [o["offset"] for o in second] == list(range(c, 60))
    offsets = [o["offset"] for o in first + second]
    assert set(offsets) == set(range(60))  # nothing lost
    duplicates = len(offsets) - len(set(offsets))
    assert 0 < duplicates <= per_bundle  # the documented at-least-once bound


@pytest.mark.parametrize("client", CLIENTS)
def test_start_at_timestamp_and_latest(kafka_broker, kafka_topics, tmp_path, client):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    base = int(time.time() * 1000) - 60_000
    produce(bs, topic, stream_records("s", 10, base), one_batch_each=True)  # ts = base + 100 i

    out = run_read(
        reader(client)(bs, topic, start=base + 450, stop_after_idle_s=0.5), tmp_path / "ts.jsonl"
    )
    assert [o["offset"] for o in out] == [5, 6, 7, 8, 9]

    # "latest": only records produced after the read resolved its start offsets. A producer
    # keeps publishing while the pipeline starts, so the test needs no start-up timing.
    def later():
        for i in range(16):
            rec = stream_records("late", 16, int(time.time() * 1000))[i]
            produce(bs, topic, [rec], one_batch_each=True)
            time.sleep(0.25)

    thread = threading.Thread(target=later)
    thread.start()
    out = run_read(
        reader(client)(bs, topic, start="latest", stop_after_idle_s=1.5), tmp_path / "latest.jsonl"
    )
    thread.join()
    offsets = [o["offset"] for o in out]
    assert out and {o["key"] for o in out} == {"late"}  # none of the 10 older records
    assert offsets == list(range(offsets[0], 26))  # a gap-free suffix up to the last record
    assert [int(header(o, contract.HEADER_FRAME_INDEX)) for o in out] == [x - 10 for x in offsets]


def test_explicit_partitions_only(kafka_broker, kafka_topics, tmp_path):
    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=2)
    recs = stream_records("x", 6, int(time.time() * 1000))
    produce(
        bs,
        topic,
        recs,
        partition_of=lambda r: (
            int(contract.header_value(r.headers, contract.HEADER_FRAME_INDEX)) % 2
        ),
    )
    out = run_read(ReadFromKafka(bs, topic, partitions=[1], max_records=3), tmp_path / "p.jsonl")
    assert [(o["partition"], int(header(o, contract.HEADER_FRAME_INDEX))) for o in out] == [
        (1, 1),
        (1, 3),
        (1, 5),
    ]


def test_missing_topic_and_partition_fail_with_a_sentence(
    kafka_broker, kafka_topics, tmp_path, monkeypatch
):
    monkeypatch.setattr(offsets, "_METADATA_WAIT_S", 1.0)
    with pytest.raises(Exception, match="does not exist"):
        run_read(
            ReadFromKafka(kafka_broker.bootstrap, "no-such-topic", max_records=1),
            tmp_path / "x.jsonl",
        )
    topic = kafka_topics()
    with pytest.raises(Exception, match=r"has no partition\(s\) \[3\]"):
        run_read(
            ReadFromKafka(kafka_broker.bootstrap, topic, partitions=[3], max_records=1),
            tmp_path / "y.jsonl",
        )


def test_reader_on_the_portable_runner(kafka_broker, kafka_topics, tmp_path):
    """The portable path Flink uses: PortableRunner with an embedded job server, loopback worker."""
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    produce(bs, topic, stream_records("s", 12, int(time.time() * 1000)))
    options = PipelineOptions(
        runner="PortableRunner", job_endpoint="embed", environment_type="LOOPBACK", streaming=True
    )
    p = beam.Pipeline(options=options)
    _ = (
        p
        | ReadFromKafka(bs, topic, max_records=12)
        | beam.ParDo(AppendJsonLines(tmp_path / "o.jsonl"))
    )
    p.run().wait_until_finish()
    assert [o["offset"] for o in load(tmp_path / "o.jsonl")] == list(range(12))


# --- watermark -----------------------------------------------------------------------------


class _Finalizer:
    def __init__(self):
        self.callbacks = []

    def register(self, callback):
        self.callbacks.append(callback)


def _process(fn, desc, rest, est):
    """One ``process`` call of the reader's SDF over ``rest``: its rows and the tracker."""
    tracker = ThreadsafeRestrictionTracker(_OffsetRestrictionProvider().create_tracker(rest))
    rows = list(fn.process(desc, _Finalizer(), tracker=RestrictionTrackerView(tracker),
                           watermark=est))  # fmt: skip
    return rows, tracker


def _drive(read, topic, partitions, rounds, on_round):
    """Run the reader's SDF the way a runner does: process, take the residual, resume."""
    cfg = read._cfg
    fn = _ReadPartitionFn(cfg)
    fn.setup()
    rp, wp = _OffsetRestrictionProvider(), _WatermarkProvider()
    state = {}
    for p in partitions:
        desc = _PartitionDescriptor(topic, p, 0, UNBOUNDED)
        rest = rp.initial_restriction(desc)
        state[p] = (desc, rest, wp.initial_estimator_state(desc, rest))
    try:
        for i in range(rounds):
            on_round(i)
            fn.start_bundle()  # a round is one bundle over the partitions
            marks = {}
            for p, (desc, rest, est_state) in state.items():
                est = wp.create_watermark_estimator(est_state)
                _, tracker = _process(fn, desc, rest, est)
                residual, _ = tracker.deferred_status()
                state[p] = (desc, residual, est.get_estimator_state())
                marks[p] = est.current_watermark()
            yield marks
    finally:
        fn.teardown()


@pytest.mark.parametrize("client", CLIENTS)
def test_quiet_partition_does_not_stall_the_watermark(kafka_broker, kafka_topics, client):
    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=2)
    producer = KafkaProducer(bootstrap_servers=bs)

    def send_live(i):  # partition 0 gets a record stamped "now" every round; partition 1 none
        producer.send(
            topic, key=b"live", value=b"x", partition=0, timestamp_ms=int(time.time() * 1000)
        ).get(5)

    def watermarks(idle_partition_s):
        read = reader(client)(bs, topic, idle_partition_s=idle_partition_s, poll_timeout_ms=50)
        before = time.time()  # the partitions' idle clocks start after this
        history = []
        for marks in _drive(read, topic, [0, 1], rounds=14, on_round=send_live):
            history.append((time.time(), marks))
            time.sleep(0.1)  # (after a record the bundle's quiet partition is not waited on)
        return before, history

    before, history = watermarks(idle_partition_s=0.5)
    for (_, prev), (now, marks) in zip(history, history[1:]):
        assert prev[0] <= marks[0] <= Timestamp.of(now) and prev[1] <= marks[1]  # monotone
        if now < before + 0.5:
            assert marks[1] == MIN_TIMESTAMP  # quiet, but not idle long enough yet
    final_time, final = history[-1]
    assert final_time - before > 1.0
    # the live partition follows its records; the quiet one follows the wall clock (now - 0.5 s)
    assert final[0] > MIN_TIMESTAMP and final[1] > MIN_TIMESTAMP
    assert final[1] >= Timestamp.of(final_time - 0.5 - 1.5)  # 1.5 s of slack for a busy machine
    assert min(final.values()) > Timestamp.of(final_time - 3.0)  # the combined watermark moves

    # without the rule, the quiet partition holds the combined watermark at the minimum forever
    _, history = watermarks(idle_partition_s=None)
    assert all(marks[1] == MIN_TIMESTAMP for _, marks in history)
    assert history[-1][1][0] > MIN_TIMESTAMP
    producer.close()


# --- the rows the reader builds (issue 15: built cheaper, the same rows) ----------------------


def test_rows_carry_the_headers_as_sent_without_a_producer_replay_mark(kafka_broker, kafka_topics):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    producer = KafkaProducer(bootstrap_servers=bs, acks="all")
    sent = [
        (b"cam-1", b"v0", [("a", b"1"), (contract.REPLAY_HEADER, b"1"), ("empty", b"")]),
        (None, b"v1", []),
        (b"cam-2", None, [("b", b""), ("b", b"2")]),
    ]
    for i, (key, value, headers) in enumerate(sent):
        producer.send(topic, key=key, value=value, headers=headers, partition=0,
                      timestamp_ms=1_700_000_000_000 + i).get(10)  # fmt: skip
    producer.close()
    fn = _ReadPartitionFn(ReadFromKafka(bs, topic, max_records=3)._cfg)
    fn.setup()
    fn_rows, rp = [], _OffsetRestrictionProvider()
    desc = _PartitionDescriptor(topic, 0, 0, 3)
    rest, est_state = rp.initial_restriction(desc), (MIN_TIMESTAMP, time.time())
    try:
        while rest is not None and len(fn_rows) < 3:  # process, take the residual, resume
            est = _WatermarkProvider().create_watermark_estimator(est_state)
            rows, tracker = _process(fn, desc, rest, est)
            fn_rows += rows
            deferred = tracker.deferred_status()  # None once the bounded range is done
            rest, est_state = deferred and deferred[0], est.get_estimator_state()
    finally:
        fn.teardown()
    records = [tv.value for tv in fn_rows]
    assert [(r.key, r.value, r.offset, r.timestamp_ms) for r in records] == [
        (b"cam-1", b"v0", 0, 1_700_000_000_000),
        (None, b"v1", 1, 1_700_000_000_001),
        (b"cam-2", b"", 2, 1_700_000_000_002),
    ]
    assert [r.headers for r in records] == [
        [("a", b"1"), ("empty", b"")],  # the producer's replay mark is not the reader's
        [],
        [("b", b""), ("b", b"2")],
    ]
    assert all(type(h) is contract.Header and type(h.value) is bytes
               for r in records for h in r.headers)  # fmt: skip
    assert [tv.timestamp for tv in fn_rows] == [
        Timestamp(micros=(1_700_000_000_000 + i) * 1000) for i in range(3)
    ]


# --- a bundle's polls (records read wait downstream until the bundle ends) ----------------------


def _bundle(fn, topic, partitions):
    """One bundle of the reader over ``partitions`` (each from offset 0): rows and seconds each."""
    rp, wp = _OffsetRestrictionProvider(), _WatermarkProvider()
    fn.start_bundle()
    rows, seconds = {}, {}
    for p in partitions:
        desc = _PartitionDescriptor(topic, p, 0, UNBOUNDED)
        rest = rp.initial_restriction(desc)
        est = wp.create_watermark_estimator(wp.initial_estimator_state(desc, rest))
        t0 = time.monotonic()
        rows[p], _ = _process(fn, desc, rest, est)
        seconds[p] = time.monotonic() - t0
    return rows, seconds


@pytest.mark.parametrize("client", CLIENTS)
def test_a_quiet_partition_does_not_hold_a_bundle_that_read_records(
    kafka_broker, kafka_topics, client
):
    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=2)
    produce(bs, topic, stream_records("s", 5, int(time.time() * 1000)), partition_of=lambda r: 0)
    fn = _ReadPartitionFn(reader(client)(bs, topic, poll_timeout_ms=3000)._cfg)
    fn.setup()
    try:
        rows, seconds = _bundle(fn, topic, [0, 1])
        assert len(rows[0]) == 5 and rows[1] == []
        # partition 1 is quiet: after partition 0's records no poll waits for it (3 s)
        assert seconds[1] < 1.5
        # a bundle that has read nothing yet waits on a quiet partition as before
        rows, seconds = _bundle(fn, topic, [1])
        assert rows[1] == [] and seconds[1] >= 2.5
    finally:
        fn.teardown()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_partition_read_ends_once_caught_up(kafka_broker, kafka_topics, client):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    produce(bs, topic, stream_records("s", 12, int(time.time() * 1000)))
    fn = _ReadPartitionFn(
        reader(client)(bs, topic, max_records_per_bundle=500, poll_timeout_ms=3000)._cfg
    )
    fn.setup()
    try:
        # the records are flushed (acks=all) and the bundle's first poll waits up to 3 s for them
        reader_of = fn._reader(_PartitionDescriptor(topic, 0, 0, UNBOUNDED))
        calls = []
        read = reader_of.read

        def counted(start, max_records, timeout_ms):
            got = read(start, max_records, timeout_ms)
            calls.append((start, max_records, len(got)))
            return got

        reader_of.read = counted
        rows, _ = _bundle(fn, topic, [0])
        got = sum(n for *_, n in calls)
        assert [tv.value.offset for tv in rows[0]] == list(range(got)) and got > 0
        # a read that returned fewer records than asked for ends the partition's part of the
        # bundle: no further polls for records that trickle in meanwhile
        assert calls[-1][2] < calls[-1][1]
        assert all(n == asked for _, asked, n in calls[:-1])
    finally:
        fn.teardown()
