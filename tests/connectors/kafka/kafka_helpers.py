"""Helpers of the Kafka connector tests: publish, read back, run a read into JSON lines."""

import functools
import hashlib
import json
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract
from costream.connectors.contract import DEFAULT_MAX_REQUEST_SIZE, record_size
from costream.connectors.kafka import ReadFromKafka


def produce(bootstrap, topic, records, partition_of=None, one_batch_each=False):
    """Publish OutgoingRecords with their ts header as the record timestamp; return them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    sent = []
    for rec in records:
        ts = contract.header_value(rec.headers, contract.HEADER_TS_MS)
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
    ct = contract.features_content_type(payload_size // 4)
    return [
        contract.frame_record(stream_id, i, start_ms + 100 * i, ct, bytes([i % 256]) * payload_size)
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


def read_topic(bootstrap, topic, expected, timeout_s=10):
    # fetches far above the records' sizes (near-limit dead letters are ~1 MB each, kafka-python
    # fetches 1 MB a partition by default), and never a jump to the end of the log
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 << 20,
        fetch_max_bytes=64 << 20,
    )
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
    value = hashlib.sha256(stream.encode()).digest() * ((DEFAULT_MAX_REQUEST_SIZE - 400) // 32)
    original = contract.frame_record(
        stream, 3, 1_700_000_000_000, contract.audio_content_type(16000), value
    )
    assert record_size(original) <= DEFAULT_MAX_REQUEST_SIZE
    return contract.dead_letter_record(
        original.key, original.value, original.headers, "reason " * 140, "decode"
    )


def reader(client):
    """``ReadFromKafka`` with the given ``client`` (kafka-python or librdkafka)."""
    return functools.partial(ReadFromKafka, client=client)
