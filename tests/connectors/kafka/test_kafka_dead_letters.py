"""Every input record is accounted for: unreadable and too-large records become dead letters."""

import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka import KafkaProducer
from kafka_helpers import (
    AppendJsonLines,
    committed,
    load,
    produce,
    read_topic,
    reader,
    run_read,
    stream_records,
)

from costream.connectors import contract
from costream.connectors.contract import (
    HEADER_DROPPED_HEADERS,
    HEADER_SOURCE,
    REPLAY_HEADER,
    OutgoingRecord,
)
from costream.connectors.kafka import CLIENTS, ReadFromKafka, WriteDeadLetters, WriteToKafka

pytestmark = pytest.mark.integration


class _NotUtf8(str):
    """A header name kafka-python's producer writes as bytes that are not UTF-8."""

    def encode(self, *args, **kwargs):
        return b"\xff\xfebad"


def _poison(kind, bs, topic):
    """Publish good-0, a poison record of ``kind``, good-2 (one batch when it matters)."""
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=50, max_request_size=4 << 20)
    good = [contract.frame_record("s", i, 1_700_000_000_000 + i, "x/y", b"v%d" % i) for i in (0, 2)]
    if kind == "header_name":
        bad = dict(key=b"s", value=b"v1", headers=[(_NotUtf8("x"), b"h"), ("ok", b"1")])
    elif kind == "timestamp":
        # a producer's replay mark is not the reader's, but a dead letter keeps every header
        bad = dict(key=b"s", value=b"v1", headers=[(REPLAY_HEADER, b"1")], timestamp_ms=2**62)
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
@pytest.mark.parametrize("client", CLIENTS)
def test_unreadable_record_is_dead_lettered_and_a_restart_goes_on(
    kafka_broker, kafka_topics, tmp_path, kind, client
):
    # Kafka 4 refuses timestamps over an hour ahead unless the topic allows them
    config = {"message.timestamp.after.max.ms": str(2**63 - 1)} if kind == "timestamp" else None
    bs, topic, dlq = kafka_broker.bootstrap, kafka_topics(config=config), kafka_topics()
    group = f"g-{time.time_ns()}"
    _poison(kind, bs, topic)

    def read(n):
        return reader(client)(bs, topic, start="committed", group_id=group, max_records=n,
                             dead_letter_topic=dlq)  # fmt: skip

    first = run_read(read(2), tmp_path / "1.jsonl")
    assert [o["offset"] for o in first] == [0]
    (dead,) = read_topic(bs, dlq, 1)
    h = dict(dead.headers)
    assert h[contract.HEADER_STAGE] == b"read" and h[HEADER_SOURCE] == f"{topic}/0/1".encode()
    assert dead.key == b"s" and dead.value == b"v1"  # the original bytes
    if kind == "header_name":
        assert b"header name b'\\xff\\xfebad' is not UTF-8" in h[contract.HEADER_ERROR]
        assert h["ok"] == b"1" and h["\\xff\\xfebad"] == b"h"
    else:
        assert b"record timestamp 4611686018427387904 ms is beyond" in h[contract.HEADER_ERROR]
        assert h[REPLAY_HEADER] == b"1"
    assert committed(bs, group, topic) == 2  # the poison's offset is committed too

    produce(bs, topic, stream_records("s", 2, 1_700_000_001_000))
    second = run_read(read(3), tmp_path / "2.jsonl")
    assert [o["offset"] for o in second] == [2, 3, 4]
    assert committed(bs, group, topic) == 5
    assert len(read_topic(bs, dlq, 2, timeout_s=1)) == 1  # no second dead letter


@pytest.mark.parametrize("client", CLIENTS)
def test_unreadable_record_without_a_dead_letter_topic_is_a_counted_skip(
    kafka_broker, kafka_topics, tmp_path, client
):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    _poison("header_name", bs, topic)
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    _ = p | reader(client)(bs, topic, max_records=3) | beam.ParDo(AppendJsonLines(tmp_path / "o"))
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
            return beam.pvalue.TaggedOutput("dead", contract.dead_letter_record(
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
        _ = split.dead | "Dlq" >> WriteDeadLetters(bs, dlq, max_request_size=limit)
        p.run().wait_until_finish()

    run(3, tmp_path / "1.jsonl")
    assert [r.value for r in read_topic(bs, t_out, 1)] == [b"a0"]
    dead = read_topic(bs, dlq, 2)
    assert len(dead) == 2
    by_stage = {dict(d.headers)[contract.HEADER_STAGE]: d for d in dead}
    w = by_stage[b"write"]
    assert w.key == big_key and dict(w.headers)[contract.HEADER_TRUNCATED] == b"true"
    assert b"is 1400" in dict(w.headers)[contract.HEADER_ERROR]
    d = by_stage[b"decode"]
    h = dict(d.headers)
    assert "junk" not in h and h[HEADER_DROPPED_HEADERS] == b"1 headers, 900004 bytes"
    assert h[contract.HEADER_ERROR] == b"bad input" and d.value == b"2"
    assert committed(bs, group, t_in) == 3

    producer = KafkaProducer(bootstrap_servers=bs)
    producer.send(t_in, key=b"c", value=b"3").get(10)
    producer.close()
    run(1, tmp_path / "2.jsonl")
    assert [o["offset"] for o in load(tmp_path / "2.jsonl")] == [3]
    assert [r.value for r in read_topic(bs, t_out, 2)] == [b"a0", b"c3"]
