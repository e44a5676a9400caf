"""WriteToKafka / WriteDeadLetters against the embedded broker: acknowledgements, sizes, codecs."""

import hashlib
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.utils.timestamp import Timestamp
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_helpers import (
    near_limit_dead_letter,
    produce,
    read_topic,
    run_read,
    stream_records,
)

from costream.connectors import contract
from costream.connectors.contract import (
    DEFAULT_MAX_REQUEST_SIZE,
    OutgoingRecord,
    RecordTooLargeError,
    record_size,
)
from costream.connectors.kafka import (
    CLIENTS,
    COMPRESSION_TYPES,
    KafkaRecord,
    ReadFromKafka,
    WriteDeadLetters,
    WriteToKafka,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client", CLIENTS)
def test_write_to_kafka_roundtrip(kafka_broker, kafka_topics, client):
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
        _ = p | beam.Create(elements) | WriteToKafka(bs, topic, acks="all", client=client)

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


@pytest.mark.parametrize("client", CLIENTS)
def test_near_limit_dead_letter_arrives_truncated_with_headers(kafka_broker, kafka_topics, client):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    big = near_limit_dead_letter()
    assert record_size(big) > DEFAULT_MAX_REQUEST_SIZE
    small = [
        contract.dead_letter_record(b"cam", bytes([i]) * 10, [], f"bad {i}", "decode")
        for i in range(3)
    ]
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create([small[0], big, *small[1:]]) | WriteDeadLetters(bs, topic, client=client)
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
    assert h[contract.HEADER_TRUNCATED] == b"true"
    assert h[contract.HEADER_ORIGINAL_SIZE] == str(len(big.value)).encode()
    assert h[contract.HEADER_ORIGINAL_SHA256] == hashlib.sha256(big.value).hexdigest().encode()
    assert big.value.startswith(cut.value) and len(cut.value) > len(big.value) - 2000
    size = record_size(OutgoingRecord(cut.key, cut.value, list(cut.headers)))
    assert DEFAULT_MAX_REQUEST_SIZE - 16 < size <= DEFAULT_MAX_REQUEST_SIZE
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
    ct, limit = contract.audio_content_type(16000), DEFAULT_MAX_REQUEST_SIZE
    good = [contract.frame_record("mic", i, 1000 + 80 * i, ct, b"\x00\x01" * 1280) for i in (0, 2)]
    empty = contract.frame_record("mic", 1, 1080, ct, b"")
    n = (limit - record_size(empty) - 8) // 2 * 2  # as long as the input may be
    bad = contract.frame_record("mic", 1, 1080, ct, hashlib.sha256(b"x").digest() * (n // 32))
    assert record_size(bad) <= limit
    produce(bs, t_in, [good[0], bad, good[1]], one_batch_each=True)

    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    features = (
        p
        | ReadFromKafka(bs, t_in, max_records=3)
        | ExtractFeatures(backbone="logmel", rate=16000, max_payload_bytes=limit)
    )
    _ = features[DEAD_LETTER] | WriteDeadLetters(bs, t_dlq)
    p.run().wait_until_finish()

    (dead,) = read_topic(bs, t_dlq, 2, timeout_s=1)  # exactly one
    h = dict(dead.headers)
    assert dead.key == bad.key and list(dead.headers)[: len(bad.headers)] == bad.headers
    assert h[contract.HEADER_STAGE] == b"features"
    assert b"takes chunks of 1280 samples" in h[contract.HEADER_ERROR]
    assert h[contract.HEADER_TRUNCATED] == b"true"
    assert h[contract.HEADER_ORIGINAL_SIZE] == str(len(bad.value)).encode()
    assert h[contract.HEADER_ORIGINAL_SHA256] == hashlib.sha256(bad.value).hexdigest().encode()
    assert bad.value.startswith(dead.value) and len(dead.value) > len(bad.value) - 1000


@pytest.mark.parametrize("client", CLIENTS)
def test_too_large_output_is_a_clear_error_and_max_request_size_raises_the_limit(
    kafka_broker, kafka_topics, client
):
    # Kafka's own limit is 1 MiB: the topic's max.message.bytes lets the 2 MiB record in
    bs, topic = kafka_broker.bootstrap, kafka_topics(config={"max.message.bytes": str(4 << 20)})
    big = near_limit_dead_letter()
    with pytest.raises(RecordTooLargeError, match=(
        rf"a record for topic '{topic}' \(key b'mic'\) is {record_size(big)} bytes "
        r"serialized, above max_request_size=1048576\. Raise max_request_size"
    )):  # fmt: skip
        with beam.Pipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create([big]) | WriteToKafka(bs, topic, client=client)
    assert read_topic(bs, topic, 1, timeout_s=1) == []
    # the option reaches the producer: with a larger limit the whole record goes through
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = (
            p
            | beam.Create([big])
            | WriteToKafka(bs, topic, max_request_size=2 << 20, client=client)
        )
    (r,) = read_topic(bs, topic, 1)
    assert r.value == big.value and list(r.headers) == big.headers


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("codec", COMPRESSION_TYPES)
def test_compressed_topics_are_read_and_written(
    kafka_broker, kafka_topics, tmp_path, codec, client
):
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
        | WriteToKafka(bs, t_out, compression_type=codec, client=client),
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


# --- producer settings (issue 15: batches fill for linger_ms instead of one wake-up a record) ---


@pytest.mark.parametrize(
    ("kwargs", "linger_ms", "batch_size"),
    [
        ({}, 5, 256 << 10),
        ({"max_request_size": 100_000}, 5, 100_000),  # a batch never outgrows a request
        ({"client_config": {"linger_ms": 0, "batch_size": 16384}}, 0, 16384),  # merged last
    ],
)
def test_writer_producer_lingers_for_batches_unless_client_config_says_otherwise(
    kafka_broker, kafka_topics, kwargs, linger_ms, batch_size
):
    bs, topic = kafka_broker.bootstrap, kafka_topics()
    fn = WriteToKafka(bs, topic, **kwargs)._fn
    fn.setup()
    try:
        assert (fn._producer.config["linger_ms"], fn._producer.config["batch_size"]) == (
            linger_ms,
            batch_size,
        )
        fn.start_bundle()
        for rec in stream_records("cam-1", 40, 1_700_000_000_000):
            fn.process(rec, Timestamp(micros=1_700_000_000_000_000))
        fn.finish_bundle()  # flushes at once: nothing waits for linger_ms
    finally:
        fn.teardown()
    got = read_topic(bs, topic, 40)
    assert [(r.key, r.value, r.headers, r.timestamp) for r in got] == [
        (r.key, r.value, list(r.headers), 1_700_000_000_000)
        for r in stream_records("cam-1", 40, 1_700_000_000_000)
    ]


@pytest.mark.parametrize("client", CLIENTS)
def test_writer_puts_each_key_on_the_partition_kafka_pythons_default_partitioner_picks(
    kafka_broker, kafka_topics, client
):
    from kafka.partitioner.default import murmur2

    bs, topic = kafka_broker.bootstrap, kafka_topics(partitions=5)
    records = [rec for s in range(12) for rec in stream_records(f"cam-{s}", 3, 1_700_000_000_000)]
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(records) | WriteToKafka(bs, topic, client=client)
    p.run().wait_until_finish()
    c = KafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False)
    tps = [TopicPartition(topic, i) for i in range(5)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, deadline = [], time.monotonic() + 10
    while len(got) < len(records) and time.monotonic() < deadline:
        got += [r for rs in c.poll(300).values() for r in rs]
    c.close()
    assert len(got) == len(records)
    assert {(r.key, r.partition) for r in got} == {
        (rec.key, (murmur2(rec.key) & 0x7FFFFFFF) % 5) for rec in records
    }
    assert len({r.partition for r in got}) > 1


# --- the librdkafka producer (issue 15: kafka-python's producer was a quarter of a frame's CPU) ---


def test_librdkafka_write_failure_fails_the_pipeline_after_its_resends():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write = WriteToKafka(f"127.0.0.1:{port}", "t", client="librdkafka", flush_timeout_s=0.5)
    with pytest.raises(Exception, match=rf"no broker of 127.0.0.1:{port} acknowledged 1 of 1 "
                       r"records to topic 't' within flush_timeout_s=0.5 s"):  # fmt: skip
        with beam.Pipeline(runner=FnApiRunner()) as p:
            _ = p | beam.Create([OutgoingRecord(b"k", b"v", [])]) | write


@pytest.mark.parametrize("client", CLIENTS)
def test_a_record_the_broker_refuses_as_too_large_becomes_a_dead_letter(
    kafka_broker, kafka_topics, client
):
    if kafka_broker.kind == "tansu":
        pytest.skip("tansu does not enforce a topic's max.message.bytes")
    bs = kafka_broker.bootstrap
    topic, dlq = kafka_topics(config={"max.message.bytes": "4000"}), kafka_topics()
    small = OutgoingRecord(b"cam", b"s" * 100, [("h", b"1")])
    big = OutgoingRecord(b"cam", b"b" * 20_000, [("h", b"2")])
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (
        p
        | beam.Create([small, big])
        | WriteToKafka(bs, topic, dead_letter_topic=dlq, client=client)
    )
    p.run().wait_until_finish()
    assert [(r.key, r.value) for r in read_topic(bs, topic, 1)] == [(small.key, small.value)]
    (dead,) = read_topic(bs, dlq, 1)
    h = dict(dead.headers)
    assert b"refused a record" in h[contract.HEADER_ERROR] and h[contract.HEADER_STAGE] == b"write"
    assert big.value.startswith(dead.value)


def test_librdkafka_settings_come_from_the_writer_and_kafka_python_names():
    from costream.connectors.kafka.librdkafka import rd_settings

    fn = WriteToKafka("127.0.0.1:1", "t", client="librdkafka", acks=1, retries=2,
                      max_request_size=100_000, compression_type="lz4", flush_timeout_s=7,
                      client_config={"linger_ms": 0, "ssl_check_hostname": False})._fn  # fmt: skip
    producer = fn._new_producer()
    conf = producer.config
    assert {k: conf[k] for k in ("acks", "retries", "message.max.bytes", "compression.type",
                                 "linger.ms", "batch.size", "message.timeout.ms",
                                 "partitioner", "ssl.endpoint.identification.algorithm")} == {
        "acks": "1", "retries": 2, "message.max.bytes": 100_000, "compression.type": "lz4",
        "linger.ms": 0, "batch.size": 100_000, "message.timeout.ms": 7000,
        "partitioner": "murmur2_random", "ssl.endpoint.identification.algorithm": "none",
    }  # fmt: skip
    producer.close(0)
    assert rd_settings({"sasl_plain_username": "u", "security_protocol": "SASL_SSL"}) == {
        "sasl.username": "u",
        "security.protocol": "SASL_SSL",
    }
    with pytest.raises(ValueError, match=r"client_config\['api_version'\] has no librdkafka"):
        WriteToKafka("h:1", "t", client="librdkafka", client_config={"api_version": (2, 0)})
    with pytest.raises(ValueError, match="client='zmq' is not valid; use 'kafka-python' or"):
        WriteToKafka("h:1", "t", client="zmq")
