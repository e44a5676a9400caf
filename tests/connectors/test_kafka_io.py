"""ReadFromKafka / WriteToKafka against the embedded broker (real broker, uuid-named topics).

Every streaming pipeline here stops by itself: ``max_records`` bounds each partition, or
``stop_after_idle_s`` ends a partition after a short quiet spell.
"""

import hashlib
import json
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from costream.connectors import codecs, kafka_io
from costream.connectors.kafka_io import KafkaRecord, OutgoingRecord, ReadFromKafka, WriteToKafka
from costream.connectors.sources import open_source
from costream.connectors.synthetic import write_synthetic_video
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


# --- helpers -------------------------------------------------------------------------------


def produce(bootstrap, topic, records, partition_of=None, one_batch_each=False):
    """Publish OutgoingRecords with their ts header as the record timestamp; return them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    sent = []
    for rec in records:
        ts = codecs.header_value(rec.headers, codecs.HEADER_TS_MS)
        future = producer.send(
            topic,
            key=rec.key,
            value=rec.value,
            headers=rec.headers,
            partition=None if partition_of is None else partition_of(rec),
            timestamp_ms=None if ts is None else int(ts),
        )
        if one_batch_each:
            future.get(10)
        sent.append(rec)
    producer.flush()
    producer.close()
    return sent


def stream_records(stream_id, n, start_ms, payload_size=64):
    ct = codecs.features_content_type(payload_size // 4)
    return [
        codecs.frame_record(stream_id, i, start_ms + 100 * i, ct, bytes([i % 256]) * payload_size)
        for i in range(n)
    ]


class AppendJsonLines(beam.DoFn):
    """Write what the reader emitted, in emission order, to a file (works across runners)."""

    def __init__(self, path):
        self.path = str(path)

    def process(self, r, ts=beam.DoFn.TimestampParam):
        row = {
            "key": None if r.key is None else r.key.decode(),
            "partition": r.partition,
            "offset": r.offset,
            "timestamp_ms": r.timestamp_ms,
            "event_ms": ts.micros // 1000,
            "headers": [[k, v.decode("latin-1")] for k, v in r.headers],
            "sha": hashlib.sha1(r.value).hexdigest(),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        yield r


class CrashAfter(beam.DoFn):
    """Fail the bundle holding the n-th element (a worker crash before the output commits)."""

    def __init__(self, n):
        self.n = n
        self.seen = 0

    def process(self, r):
        self.seen += 1
        if self.seen > self.n:
            raise RuntimeError(f"simulated crash after {self.n} records")
        yield r


def run_read(read, out_path, *, then=None, options=None):
    p = beam.Pipeline(runner=FnApiRunner(), options=options or PipelineOptions(streaming=True))
    pcoll = p | "Read" >> read | "Record" >> beam.ParDo(AppendJsonLines(out_path))
    if then is not None:
        _ = pcoll | "Then" >> then
    p.run().wait_until_finish()
    return load(out_path)


def load(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def header(row, name):
    return dict(row["headers"])[name]


def committed(bootstrap, group, topic, partition=0):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return c.committed(TopicPartition(topic, partition))
    finally:
        c.close(autocommit=False)


# --- reading -------------------------------------------------------------------------------


def test_produced_video_arrives_once_in_order_with_headers(kafka_broker, kafka_topics, tmp_path):
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
        ReadFromKafka(kafka_broker.bootstrap, topic, max_records=24), tmp_path / "out.jsonl"
    )

    assert [int(header(o, codecs.HEADER_FRAME_INDEX)) for o in out] == list(range(24))
    assert [o["offset"] for o in out] == list(range(24))
    for o, rec in zip(out, sent):
        assert o["key"] == "cam-1"
        assert [(k, v.encode("latin-1")) for k, v in o["headers"]] == rec.headers
        assert o["sha"] == hashlib.sha1(rec.value).hexdigest()
        ts = int(header(o, codecs.HEADER_TS_MS))
        assert o["timestamp_ms"] == ts and o["event_ms"] == ts  # event time = record timestamp


def test_streams_on_several_partitions_interleave_in_order(kafka_broker, kafka_topics, tmp_path):
    topic = kafka_topics(partitions=3)
    now = int(time.time() * 1000)
    streams = {"a": 0, "b": 0, "c": 1, "d": 2}  # two streams share partition 0
    per_stream = {s: stream_records(s, 15, now) for s in streams}
    interleaved = [per_stream[s][i] for i in range(15) for s in streams]
    produce(
        kafka_broker.bootstrap, topic, interleaved, partition_of=lambda r: streams[r.key.decode()]
    )

    read = ReadFromKafka(
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
        assert [int(header(o, codecs.HEADER_FRAME_INDEX)) for o in mine] == list(range(15))
    # records of partition 0 keep the interleaving of streams a and b (offset order)
    p0 = [o for o in out if o["partition"] == 0]
    assert [o["offset"] for o in p0] == list(range(30))
    assert [o["key"] for o in p0[:4]] == ["a", "b", "a", "b"]


def test_restart_from_committed_offsets_loses_nothing(kafka_broker, kafka_topics, tmp_path):
    bs, topic, group = kafka_broker.bootstrap, kafka_topics(), f"g-{time.time_ns()}"
    produce(bs, topic, stream_records("s", 50, int(time.time() * 1000)))

    first = run_read(
        ReadFromKafka(bs, topic, start="committed", group_id=group, max_records=20),
        tmp_path / "1.jsonl",
    )
    assert [o["offset"] for o in first] == list(range(20))
    # the finalizer of the last bundle committed "next offset to read"
    assert committed(bs, group, topic) == 20

    second = run_read(
        ReadFromKafka(bs, topic, start="committed", group_id=group, stop_after_idle_s=1.0),
        tmp_path / "2.jsonl",
    )
    assert [o["offset"] for o in second] == list(range(20, 50))
    assert committed(bs, group, topic) == 50


def test_crash_before_commit_rereads_at_most_one_bundle(kafka_broker, kafka_topics, tmp_path):
    bs, topic, group = kafka_broker.bootstrap, kafka_topics(), f"g-{time.time_ns()}"
    produce(bs, topic, stream_records("s", 60, int(time.time() * 1000)))
    per_bundle = 10

    def read():
        return ReadFromKafka(bs, topic, start="committed", group_id=group, stop_after_idle_s=1.0,
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


def test_start_at_timestamp_and_latest(kafka_broker, kafka_topics, tmp_path):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    base = int(time.time() * 1000) - 60_000
    produce(bs, topic, stream_records("s", 10, base), one_batch_each=True)  # ts = base + 100 i

    out = run_read(
        ReadFromKafka(bs, topic, start=base + 450, stop_after_idle_s=0.5), tmp_path / "ts.jsonl"
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
        ReadFromKafka(bs, topic, start="latest", stop_after_idle_s=1.5), tmp_path / "latest.jsonl"
    )
    thread.join()
    offsets = [o["offset"] for o in out]
    assert out and {o["key"] for o in out} == {"late"}  # none of the 10 older records
    assert offsets == list(range(offsets[0], 26))  # a gap-free suffix up to the last record
    assert [int(header(o, codecs.HEADER_FRAME_INDEX)) for o in out] == [x - 10 for x in offsets]


def test_explicit_partitions_only(kafka_broker, kafka_topics, tmp_path):
    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=2)
    recs = stream_records("x", 6, int(time.time() * 1000))
    produce(
        bs,
        topic,
        recs,
        partition_of=lambda r: int(codecs.header_value(r.headers, codecs.HEADER_FRAME_INDEX)) % 2,
    )
    out = run_read(ReadFromKafka(bs, topic, partitions=[1], max_records=3), tmp_path / "p.jsonl")
    assert [(o["partition"], int(header(o, codecs.HEADER_FRAME_INDEX))) for o in out] == [
        (1, 1),
        (1, 3),
        (1, 5),
    ]


def test_missing_topic_and_partition_fail_with_a_sentence(
    kafka_broker, kafka_topics, tmp_path, monkeypatch
):
    monkeypatch.setattr(kafka_io, "_METADATA_WAIT_S", 1.0)
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


def _drive(read, topic, partitions, rounds, on_round):
    """Run the reader's SDF the way a runner does: process, take the residual, resume."""
    cfg = read._cfg
    fn = kafka_io._ReadPartitionFn(cfg)
    fn.setup()
    rp, wp = kafka_io._OffsetRestrictionProvider(), kafka_io._WatermarkProvider()
    state = {}
    for p in partitions:
        desc = kafka_io._PartitionDescriptor(topic, p, 0, kafka_io.UNBOUNDED)
        rest = rp.initial_restriction(desc)
        state[p] = (desc, rest, wp.initial_estimator_state(desc, rest))
    try:
        for i in range(rounds):
            on_round(i)
            marks = {}
            for p, (desc, rest, est_state) in state.items():
                tracker = ThreadsafeRestrictionTracker(rp.create_tracker(rest))
                est = wp.create_watermark_estimator(est_state)
                list(
                    fn.process(
                        desc, _Finalizer(), tracker=RestrictionTrackerView(tracker), watermark=est
                    )
                )
                residual, _ = tracker.deferred_status()
                state[p] = (desc, residual, est.get_estimator_state())
                marks[p] = est.current_watermark()
            yield marks
    finally:
        fn.teardown()


def test_quiet_partition_does_not_stall_the_watermark(kafka_broker, kafka_topics):
    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=2)
    producer = KafkaProducer(bootstrap_servers=bs)

    def send_live(i):  # partition 0 gets a record stamped "now" every round; partition 1 none
        producer.send(
            topic, key=b"live", value=b"x", partition=0, timestamp_ms=int(time.time() * 1000)
        ).get(5)

    def watermarks(idle_partition_s):
        read = ReadFromKafka(bs, topic, idle_partition_s=idle_partition_s, poll_timeout_ms=50)
        before = time.time()  # the partitions' idle clocks start after this
        history = []
        for marks in _drive(read, topic, [0, 1], rounds=14, on_round=send_live):
            history.append((time.time(), marks))
            time.sleep(0.05)
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


# --- writing -------------------------------------------------------------------------------


def test_write_to_kafka_roundtrip(kafka_broker, kafka_topics):
    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=2)
    outgoing = [
        OutgoingRecord(
            f"k{i % 5}".encode(),
            f"value-{i}".encode(),
            [("h", str(i).encode()), ("x", b"\x00\xff")],
        )
        for i in range(40)
    ]
    elements = (
        outgoing[:30]
        + [(r.key, r.value, r.headers) for r in outgoing[30:35]]
        + [
            KafkaRecord(r.key, r.value, r.headers, "src", 0, 7, 1_700_000_000_000)
            for r in outgoing[35:]
        ]
    )
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create(elements) | WriteToKafka(bs, topic, acks="all")

    c = KafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, deadline = [], time.monotonic() + 10
    while len(got) < 40 and time.monotonic() < deadline:
        got += [r for rs in c.poll(500).values() for r in rs]
    c.close()
    assert sorted((r.key, r.value, list(r.headers)) for r in got) == sorted(
        (r.key, r.value, r.headers) for r in outgoing
    )
    # same key -> same partition
    assert all(len({r.partition for r in got if r.key == k}) == 1 for k in {r.key for r in got})
    assert {r.timestamp for r in got if r.value in {o.value for o in outgoing[35:]}} == {
        1_700_000_000_000
    }


def test_write_failure_fails_the_pipeline_instead_of_dropping(tmp_path):
    # tansu auto-creates topics on producer metadata requests, so make the broker unreachable.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write = WriteToKafka(
        f"127.0.0.1:{port}", "t", client_config={"max_block_ms": 500, "bootstrap_timeout_ms": 1000}
    )
    with pytest.raises(Exception, match="KafkaTimeoutError|bootstrap|not acknowledged"):
        with beam.Pipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create([OutgoingRecord(b"k", b"v", [])]) | write


def read_topic(bootstrap, topic, expected, timeout_s=10):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got += [r for rs in c.poll(300).values() for r in rs]
    c.close()
    return got


def near_limit_dead_letter(stream="mic"):
    """An input record that itself fits in 1 MiB; dead-lettered with a long reason, it does not."""
    value = hashlib.sha256(stream.encode()).digest() * (
        (kafka_io.DEFAULT_MAX_REQUEST_SIZE - 400) // 32
    )
    original = codecs.frame_record(
        stream, 3, 1_700_000_000_000, codecs.audio_content_type(16000), value
    )
    assert kafka_io.record_size(original) <= kafka_io.DEFAULT_MAX_REQUEST_SIZE
    return codecs.dead_letter_record(
        original.key, original.value, original.headers, "reason " * 140, "decode"
    )


def test_near_limit_dead_letter_arrives_truncated_with_headers(kafka_broker, kafka_topics):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    big = near_limit_dead_letter()
    assert kafka_io.record_size(big) > kafka_io.DEFAULT_MAX_REQUEST_SIZE
    small = [
        codecs.dead_letter_record(b"cam", bytes([i]) * 10, [], f"bad {i}", "decode")
        for i in range(3)
    ]
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create([small[0], big, *small[1:]]) | kafka_io.WriteDeadLetters(bs, topic)
    result = p.run()
    result.wait_until_finish()

    got = read_topic(bs, topic, 4)
    assert len(got) == 4  # nothing lost
    assert sorted((r.key, r.value, list(r.headers)) for r in got if r.key == b"cam") == sorted(
        (r.key, r.value, r.headers) for r in small
    )  # records that fit are published untouched
    (cut,) = [r for r in got if r.key == b"mic"]
    h = dict(cut.headers)
    assert list(cut.headers)[: len(big.headers)] == big.headers  # reason, stage, originals kept
    assert h[codecs.HEADER_TRUNCATED] == b"true"
    assert h[codecs.HEADER_ORIGINAL_SIZE] == str(len(big.value)).encode()
    assert h[codecs.HEADER_ORIGINAL_SHA256] == hashlib.sha256(big.value).hexdigest().encode()
    assert big.value.startswith(cut.value) and len(cut.value) > len(big.value) - 2000
    size = kafka_io.record_size(OutgoingRecord(cut.key, cut.value, list(cut.headers)))
    assert kafka_io.DEFAULT_MAX_REQUEST_SIZE - 16 < size <= kafka_io.DEFAULT_MAX_REQUEST_SIZE
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(beam.metrics.MetricsFilter())["counters"]
    }
    assert counters["records_truncated"] == 1 and counters["records_written"] == 4
    assert counters["bytes_truncated"] == len(big.value) - len(cut.value)


def test_near_limit_input_is_dead_lettered_by_extract_features_and_truncated(
    kafka_broker, kafka_topics
):
    # An input record the broker took (it fits in 1 MiB) whose audio the logmel backbone
    # refuses: its dead letter (the record plus the reason) is over 1 MiB and is cut to fit.
    from costream.transforms.features import ExtractFeatures
    from costream.transforms.records import DEAD_LETTER

    bs, t_in, t_dlq = kafka_broker.bootstrap, kafka_topics(), kafka_topics()
    ct, limit = codecs.audio_content_type(16000), kafka_io.DEFAULT_MAX_REQUEST_SIZE
    good = [codecs.frame_record("mic", i, 1000 + 80 * i, ct, b"\x00\x01" * 1280) for i in (0, 2)]
    empty = codecs.frame_record("mic", 1, 1080, ct, b"")
    n = (limit - kafka_io.record_size(empty) - 8) // 2 * 2  # as long as the input may be
    bad = codecs.frame_record("mic", 1, 1080, ct, hashlib.sha256(b"x").digest() * (n // 32))
    assert kafka_io.record_size(bad) <= limit
    produce(bs, t_in, [good[0], bad, good[1]], one_batch_each=True)

    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    features = (
        p
        | ReadFromKafka(bs, t_in, max_records=3)
        | ExtractFeatures(backbone="logmel", rate=16000, max_payload_bytes=limit)
    )
    _ = features[DEAD_LETTER] | kafka_io.WriteDeadLetters(bs, t_dlq)
    p.run().wait_until_finish()

    (dead,) = read_topic(bs, t_dlq, 2, timeout_s=1)  # exactly one
    h = dict(dead.headers)
    assert dead.key == bad.key and list(dead.headers)[: len(bad.headers)] == bad.headers
    assert h[codecs.HEADER_STAGE] == b"features"
    assert b"takes chunks of 1280 samples" in h[codecs.HEADER_ERROR]
    assert h[codecs.HEADER_TRUNCATED] == b"true"
    assert h[codecs.HEADER_ORIGINAL_SIZE] == str(len(bad.value)).encode()
    assert h[codecs.HEADER_ORIGINAL_SHA256] == hashlib.sha256(bad.value).hexdigest().encode()
    assert bad.value.startswith(dead.value) and len(dead.value) > len(bad.value) - 1000


def test_too_large_output_is_a_clear_error_and_max_request_size_raises_the_limit(
    kafka_broker, kafka_topics
):
    # Kafka's own limit is 1 MiB: the topic's max.message.bytes lets the 2 MiB record in
    bs, topic = kafka_broker.bootstrap, kafka_topics(config={"max.message.bytes": str(4 << 20)})
    big = near_limit_dead_letter()
    with pytest.raises(kafka_io.RecordTooLargeError, match=(
        rf"a record for topic '{topic}' \(key b'mic'\) is {kafka_io.record_size(big)} bytes "
        r"serialized, above max_request_size=1048576\. Raise max_request_size"
    )):  # fmt: skip
        with beam.Pipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create([big]) | WriteToKafka(bs, topic)
    assert read_topic(bs, topic, 1, timeout_s=1) == []
    # the option reaches the producer: with a larger limit the whole record goes through
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create([big]) | WriteToKafka(bs, topic, max_request_size=2 << 20)
    (r,) = read_topic(bs, topic, 1)
    assert r.value == big.value and list(r.headers) == big.headers


def test_fit_record_cuts_only_what_does_not_fit():
    limit = 4096
    headers = [("costream.error", b"e" * 100)]
    for n in (0, 3900, 3995, 4000, 4100, 20_000, 300_000):
        rec = OutgoingRecord(b"k", bytes(range(256)) * (n // 256) + b"x" * (n % 256), headers)
        fit = kafka_io.fit_record(rec, limit)
        assert kafka_io.record_size(fit) <= limit
        if kafka_io.record_size(rec) <= limit:
            assert fit is rec
        else:
            assert rec.value.startswith(fit.value) and kafka_io.record_size(fit) > limit - 16
            assert codecs.header_value(fit.headers, codecs.HEADER_ORIGINAL_SIZE) == str(n).encode()
    with pytest.raises(kafka_io.RecordTooLargeError, match="key and headers alone take"):
        kafka_io.fit_record(OutgoingRecord(b"k", b"v" * 10, [("h", b"x" * limit)]), limit)


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        (dict(start="newest"), "'earliest', 'latest', 'committed' or a timestamp"),
        (dict(start=-5), "a timestamp in ms"),
        (dict(start=True), "a timestamp in ms"),
        (dict(start="committed"), "needs a group_id"),
        (dict(max_records=0), "max_records must be a positive integer"),
        (dict(stop_after_idle_s=-1), "stop_after_idle_s must be a positive number"),
        (dict(partitions=[0, 0]), "distinct partition numbers"),
        (dict(client_config={"nope": 1}), "unknown kafka-python setting 'nope'"),
        (dict(client_config={"enable_auto_commit": True}), "never automatically"),
        (dict(client_config={"sasl_plain_password": {"env": "X"}}), "from_env"),
    ],
)
def test_read_config_is_validated_in_the_constructor(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(")):
        ReadFromKafka("127.0.0.1:9092", "t", **kwargs)


def test_bad_arguments_in_general():
    with pytest.raises(ValueError, match="host:port"):
        ReadFromKafka("", "t")
    with pytest.raises(ValueError, match="topics must be"):
        ReadFromKafka("h:1", [])
    with pytest.raises(ValueError, match="acks=2 is not valid; use 0, 1 or 'all'"):
        WriteToKafka("h:1", "t", acks=2)
    with pytest.raises(ValueError, match="pass acks as the acks argument"):
        WriteToKafka("h:1", "t", client_config={"acks": 1})
    with pytest.raises(
        ValueError, match="oversize='drop' is not valid; use 'error' or 'truncate' or 'dead_letter'"
    ):
        WriteToKafka("h:1", "t", oversize="drop")
    with pytest.raises(ValueError, match="max_request_size must be a positive integer"):
        WriteToKafka("h:1", "t", max_request_size=0)
    with pytest.raises(ValueError, match="pass max_request_size as the max_request_size argument"):
        kafka_io.WriteDeadLetters("h:1", "t", client_config={"max_request_size": 1 << 22})
    with pytest.raises(TypeError, match="OutgoingRecord, KafkaRecord"):
        kafka_io.as_outgoing("just a string")


def test_client_config_secrets_come_from_the_environment(monkeypatch):
    cfg = {"security_protocol": "SASL_SSL", "sasl_plain_password": {"from_env": "COSTREAM_TEST_PW"}}
    read = ReadFromKafka("h:1", "t", client_config=cfg)  # accepted without the variable set
    with pytest.raises(ValueError, match="'COSTREAM_TEST_PW', which is not set"):
        kafka_io.resolve_client_config(read._cfg.client_config)
    monkeypatch.setenv("COSTREAM_TEST_PW", "s3cret")
    assert (
        kafka_io.resolve_client_config(read._cfg.client_config)["sasl_plain_password"] == "s3cret"
    )


def test_record_coders_roundtrip_and_are_registered():
    # KafkaRecord is a Beam row (RowCoder, benchmarks/bench_rows.py), so its headers are rows
    rec = KafkaRecord(
        None,
        b"\x00v",
        [codecs.Header("a", b""), codecs.Header("b", b"\xff")],
        "topic",
        3,
        2**40,
        1_700_000_000_000,
    )
    coder = beam.coders.registry.get_coder(KafkaRecord)
    assert isinstance(coder, beam.coders.RowCoder) and coder.is_deterministic()
    assert coder.decode(coder.encode(rec)) == rec
    out = OutgoingRecord(b"k", b"", [])
    assert (
        beam.coders.registry.get_coder(OutgoingRecord).decode(
            kafka_io.OutgoingRecordCoder().encode(out)
        )
        == out
    )


# --- rows: detections, dead letters, any schema'd row with format="json" ---------------------


def _detection(stream="cam-1", i=7, warm=True):
    return codecs.make_detection(
        stream, i, 1_700_000_000_000 + i, [0.25, 0.75], ["bg", "person"], warm=warm,
        model="m@0123456789ab", latency_ms=1.5,
    )  # fmt: skip


def _dead_letter(replay=False):
    original = stream_records("mic", 1, 1_700_000_000_000)[0]
    headers = [*original.headers] + (
        [codecs.Header(kafka_io.REPLAY_HEADER, b"1")] if replay else []
    )
    return codecs.dead_letter(original.key, original.value, headers, "bad  audio\n", "decode")


def _row_coded(row):
    """``row`` after Beam's RowCoder: an instance of a class Beam generated from the schema."""
    coder = beam.coders.registry.get_coder(type(row))
    back = coder.decode(coder.encode(row))
    assert type(back) is not type(row)
    return back


def test_writer_takes_detection_and_dead_letter_rows_as_the_records_of_today():
    det, dead = _detection(), _dead_letter()
    want_det = codecs.detection_record(det)
    want_dead = codecs.dead_letter_record(dead.key, dead.value, dead.headers, dead.error, "decode")
    assert dict(want_dead.headers)[codecs.HEADER_ERROR] == b"bad audio"
    as_row = beam.Row(**det._asdict())
    for row in (det, _row_coded(det), as_row):
        assert kafka_io.as_outgoing(row) == want_det
    assert codecs.decode_detection(want_det.value) == det
    for row in (dead, _row_coded(dead)):
        assert kafka_io.as_outgoing(row) == want_dead
    rec = KafkaRecord(b"k", b"v", [codecs.Header("h", b"1")], "t", 0, 1, 2)
    assert kafka_io.as_outgoing(_row_coded(rec)) == OutgoingRecord(b"k", b"v", [("h", b"1")])


def test_writer_writes_any_row_as_json_with_a_key_field():
    row = beam.Row(stream_id="cam-1", n=3, mean=0.5, raw=b"\x00\xff", top=beam.Row(label="a"),
                   scores=[0.25, 0.75], none=None)  # fmt: skip
    rec = kafka_io.as_outgoing(row, format="json", key="stream_id")
    assert rec.key == b"cam-1" and rec.headers == [("content-type", b"application/json")]
    assert json.loads(rec.value) == {
        "stream_id": "cam-1", "n": 3, "mean": 0.5, "raw": "AP8=", "top": {"label": "a"},
        "scores": [0.25, 0.75], "none": None,
    }  # fmt: skip
    assert list(json.loads(rec.value)) == list(row.as_dict())  # fields in schema order
    assert kafka_io.as_outgoing(row, format="json").key is None
    det = kafka_io.as_outgoing(_detection(), format="json", key="frame_index")
    assert det.key == b"7" and json.loads(det.value)["top_label"] == "person"
    with pytest.raises(TypeError, match=r"fields \(stream_id, n, .*give format='json'"):
        kafka_io.as_outgoing(row)
    with pytest.raises(ValueError, match="no field 'camera'; its fields are stream_id, n"):
        kafka_io.as_outgoing(row, format="json", key="camera")
    with pytest.raises(ValueError, match="is not JSON"):
        kafka_io.as_outgoing(beam.Row(x=float("nan")), format="json")
    with pytest.raises(TypeError, match="writes schema'd rows"):
        kafka_io.as_outgoing(b"raw bytes", format="json")


def test_writer_refuses_rows_it_cannot_write_at_construction():
    with pytest.raises(ValueError, match="format='xml' is not valid; use None .* 'json'"):
        WriteToKafka("h:1", "t", format="xml")
    with pytest.raises(ValueError, match="key='stream_id' names the row field .* format='json'"):
        WriteToKafka("h:1", "t", key="stream_id")
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(stream_id="a", n=1)])
    with pytest.raises(ValueError, match=r"fields \(stream_id, n\), which are not a detection"):
        _ = rows | "Auto" >> WriteToKafka("h:1", "t")
    with pytest.raises(ValueError, match="key='camera' is not a field of the input rows"):
        _ = rows | "Json" >> WriteToKafka("h:1", "t", format="json", key="camera")
    _ = rows | "Ok" >> WriteToKafka("h:1", "t", format="json", key="stream_id")
    dets = p | "Dets" >> beam.Create([_detection()])
    assert dets.element_type is codecs.Detection
    _ = dets | "Detections" >> WriteToKafka("h:1", "t")


def test_write_rows_roundtrip_and_replayed_dead_letters_are_dropped(kafka_broker, kafka_topics):
    bs, t_det, t_json, t_dlq = (kafka_broker.bootstrap, kafka_topics(), kafka_topics(),
                                kafka_topics())  # fmt: skip
    dets = [_detection(i=i, warm=i > 2) for i in range(6)]
    dead, replayed = _dead_letter(), _dead_letter(replay=True)
    p = beam.Pipeline(runner=FnApiRunner())
    # Reshuffles: the writers get rows Beam's RowCoder decoded, as after any fusion break
    d = p | "Dets" >> beam.Create(dets) | "ShuffleDets" >> beam.Reshuffle()
    _ = d | "Detections" >> WriteToKafka(bs, t_det)
    _ = (d | beam.Map(lambda r: beam.Row(stream_id=r.stream_id, frame=r.frame_index,
                                          top=r.top_label))  # fmt: skip
           | "Json" >> WriteToKafka(bs, t_json, format="json", key="stream_id"))  # fmt: skip
    _ = (
        p
        | "Dead" >> beam.Create([dead, replayed])
        | "ShuffleDead" >> beam.Reshuffle()
        | kafka_io.WriteDeadLetters(bs, t_dlq)
    )
    result = p.run()
    result.wait_until_finish()

    def wire(records):
        return sorted((r.key, r.value, list(r.headers)) for r in records)

    assert wire(read_topic(bs, t_det, 6)) == wire(codecs.detection_record(x) for x in dets)
    got = read_topic(bs, t_json, 6)
    assert sorted((r.key, json.loads(r.value)["frame"]) for r in got) == [
        (b"cam-1", i) for i in range(6)
    ]
    assert json.loads(got[0].value)["top"] == "person"
    assert wire(read_topic(bs, t_dlq, 2, timeout_s=2)) == wire([codecs.dead_letter_to_record(dead)])
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(beam.metrics.MetricsFilter())["counters"]
    }
    assert counters["records_replay_dropped"] == 1


# --- compression ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", kafka_io.COMPRESSION_TYPES)
def test_compressed_topics_are_read_and_written(kafka_broker, kafka_topics, tmp_path, codec):
    bs, t_in, t_out = kafka_broker.bootstrap, kafka_topics(), kafka_topics()
    recs = stream_records("z", 30, 1_700_000_000_000, payload_size=400)
    producer = KafkaProducer(bootstrap_servers=bs, compression_type=codec, linger_ms=20)
    for rec in recs:
        producer.send(t_in, key=rec.key, value=rec.value, headers=rec.headers)
    producer.flush()
    producer.close()

    out = run_read(
        ReadFromKafka(bs, t_in, max_records=30),
        tmp_path / "o.jsonl",
        then=beam.Map(lambda r: OutgoingRecord(r.key, r.value, r.headers))
        | WriteToKafka(bs, t_out, compression_type=codec),
    )
    assert [o["sha"] for o in out] == [hashlib.sha1(r.value).hexdigest() for r in recs]
    got = read_topic(bs, t_out, 30)
    assert [(r.key, r.value, list(r.headers)) for r in got] == [
        (r.key, r.value, r.headers) for r in recs
    ]


def test_compression_type_is_validated():
    with pytest.raises(ValueError, match="compression_type='brotli' is not valid; use None or one"):
        WriteToKafka("h:1", "t", compression_type="brotli")
    with pytest.raises(ValueError, match="pass compression_type as the compression_type argument"):
        WriteToKafka("h:1", "t", client_config={"compression_type": "lz4"})


# --- every input record is accounted for ---------------------------------------------------


class _NotUtf8(str):
    """A header name kafka-python's producer writes as bytes that are not UTF-8."""

    def encode(self, *args, **kwargs):
        return b"\xff\xfebad"


def _poison(kind, bs, topic):
    """Publish good-0, a poison record of ``kind``, good-2 (one batch when it matters)."""
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=50, max_request_size=4 << 20)
    good = [codecs.frame_record("s", i, 1_700_000_000_000 + i, "x/y", b"v%d" % i) for i in (0, 2)]
    if kind == "header_name":
        bad = dict(key=b"s", value=b"v1", headers=[(_NotUtf8("x"), b"h"), ("ok", b"1")])
    elif kind == "timestamp":
        bad = dict(key=b"s", value=b"v1", headers=[], timestamp_ms=2**62)
    futures = [producer.send(topic, key=good[0].key, value=good[0].value, headers=good[0].headers)]
    futures.append(producer.send(topic, **bad))
    futures.append(
        producer.send(topic, key=good[1].key, value=good[1].value, headers=good[1].headers)
    )
    producer.flush()
    producer.close()
    assert all(f.succeeded() for f in futures)
    return good


@pytest.mark.parametrize("kind", ["header_name", "timestamp"])
def test_unreadable_record_is_dead_lettered_and_a_restart_goes_on(
    kafka_broker, kafka_topics, tmp_path, kind
):
    # Kafka 4 refuses timestamps over an hour ahead unless the topic allows them
    config = {"message.timestamp.after.max.ms": str(2**63 - 1)} if kind == "timestamp" else None
    bs, topic, dlq = kafka_broker.bootstrap, kafka_topics(config=config), kafka_topics()
    group = f"g-{time.time_ns()}"
    _poison(kind, bs, topic)

    def read(n):
        return ReadFromKafka(bs, topic, start="committed", group_id=group, max_records=n,
                             dead_letter_topic=dlq)  # fmt: skip

    first = run_read(read(2), tmp_path / "1.jsonl")
    assert [o["offset"] for o in first] == [0]
    (dead,) = read_topic(bs, dlq, 1)
    h = dict(dead.headers)
    assert (
        h[codecs.HEADER_STAGE] == b"read" and h[kafka_io.HEADER_SOURCE] == f"{topic}/0/1".encode()
    )
    assert dead.key == b"s" and dead.value == b"v1"  # the original bytes
    if kind == "header_name":
        assert b"header name b'\\xff\\xfebad' is not UTF-8" in h[codecs.HEADER_ERROR]
        assert h["ok"] == b"1" and h["\\xff\\xfebad"] == b"h"
    else:
        assert b"record timestamp 4611686018427387904 ms is beyond" in h[codecs.HEADER_ERROR]
    assert committed(bs, group, topic) == 2  # the poison's offset is committed too

    produce(bs, topic, stream_records("s", 2, 1_700_000_001_000))
    second = run_read(read(3), tmp_path / "2.jsonl")
    assert [o["offset"] for o in second] == [2, 3, 4]
    assert committed(bs, group, topic) == 5
    assert len(read_topic(bs, dlq, 2, timeout_s=1)) == 1  # no second dead letter


def test_unreadable_record_without_a_dead_letter_topic_is_a_counted_skip(
    kafka_broker, kafka_topics, tmp_path
):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    _poison("header_name", bs, topic)
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    _ = p | ReadFromKafka(bs, topic, max_records=3) | beam.ParDo(AppendJsonLines(tmp_path / "o"))
    result = p.run()
    result.wait_until_finish()
    assert [o["offset"] for o in load(tmp_path / "o")] == [0, 2]
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(beam.metrics.MetricsFilter())["counters"]}  # fmt: skip
    assert counters["records_skipped"] == 1


def test_too_large_detection_and_dead_letter_are_cut_to_fit_and_a_restart_goes_on(
    kafka_broker, kafka_topics, tmp_path
):
    # A 700 KB key: the record fits, its "detection" (key + value holding the key) does not;
    # a bad record whose headers alone exceed the limit: its dead letter drops them.
    bs, t_in, t_out, dlq = (kafka_broker.bootstrap, kafka_topics(), kafka_topics(), kafka_topics())
    group = f"g-{time.time_ns()}"
    big_key = b"k" * 700_000
    producer = KafkaProducer(bootstrap_servers=bs, max_request_size=4 << 20)
    producer.send(t_in, key=b"a", value=b"0").get(10)
    producer.send(t_in, key=big_key, value=b"1").get(10)
    producer.send(t_in, key=b"b", value=b"2", headers=[("junk", b"j" * 900_000)]).get(10)
    producer.close()
    limit = 800_000

    def to_detection(r):  # stands in for inference: the value repeats the key
        return OutgoingRecord(r.key, r.key + r.value, r.headers)

    def dead_or_alive(r):  # records with a header "junk" are "bad input": dead letters
        if any(k == "junk" for k, _ in r.headers):
            return beam.pvalue.TaggedOutput("dead", codecs.dead_letter_record(
                r.key, r.value, r.headers, "bad input", "decode"))  # fmt: skip
        return to_detection(r)

    def run(n, out):
        p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
        records = p | ReadFromKafka(bs, t_in, start="committed", group_id=group, max_records=n)
        split = (records | beam.ParDo(AppendJsonLines(out))
                 | beam.Map(dead_or_alive).with_outputs("dead", main="main"))  # fmt: skip
        _ = split.main | "Out" >> WriteToKafka(
            bs, t_out, max_request_size=limit, dead_letter_topic=dlq
        )
        _ = split.dead | "Dlq" >> kafka_io.WriteDeadLetters(bs, dlq, max_request_size=limit)
        p.run().wait_until_finish()

    run(3, tmp_path / "1.jsonl")
    assert [r.value for r in read_topic(bs, t_out, 1)] == [b"a0"]
    dead = read_topic(bs, dlq, 2)
    assert len(dead) == 2
    by_stage = {dict(d.headers)[codecs.HEADER_STAGE]: d for d in dead}
    w = by_stage[b"write"]
    assert w.key == big_key and dict(w.headers)[codecs.HEADER_TRUNCATED] == b"true"
    assert b"is 1400" in dict(w.headers)[codecs.HEADER_ERROR]
    d = by_stage[b"decode"]
    h = dict(d.headers)
    assert "junk" not in h and h[kafka_io.HEADER_DROPPED_HEADERS] == b"1 headers, 900004 bytes"
    assert h[codecs.HEADER_ERROR] == b"bad input" and d.value == b"2"
    assert committed(bs, group, t_in) == 3

    producer = KafkaProducer(bootstrap_servers=bs)
    producer.send(t_in, key=b"c", value=b"3").get(10)
    producer.close()
    run(1, tmp_path / "2.jsonl")
    assert [o["offset"] for o in load(tmp_path / "2.jsonl")] == [3]
    assert [r.value for r in read_topic(bs, t_out, 2)] == [b"a0", b"c3"]


def test_fit_dead_letter_cuts_headers_then_the_key():
    limit = 4096
    rec = codecs.dead_letter_record(b"k" * 10_000, b"v" * 5000, [("h", b"x" * 9000)], "why", "read")
    cut = kafka_io.fit_dead_letter(rec, limit)
    h = dict(cut.headers)
    assert kafka_io.record_size(cut) <= limit and h[codecs.HEADER_ERROR] == b"why"
    assert h[kafka_io.HEADER_ORIGINAL_KEY_SIZE] == b"10000" and rec.key.startswith(cut.key)
    assert h[kafka_io.HEADER_DROPPED_HEADERS] == b"1 headers, 9001 bytes"
    with pytest.raises(kafka_io.RecordTooLargeError, match="Not even an empty dead letter"):
        kafka_io.fit_dead_letter(rec, 100)
