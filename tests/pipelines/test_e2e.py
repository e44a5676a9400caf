"""End to end: real broker, the video spec on the embedded runner, bad records dead-lettered."""

import json
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract
from costream.connectors.synthetic import synthetic_video
from costream.models.zoo import get_model, save_model
from costream.pipelines.offline import score_records
from costream.pipelines.runner import run_spec
from costream.transforms.decode import decode_record

SPEC = Path(__file__).resolve().parents[2] / "pipelines" / "specs" / "video.yaml"
STREAMS, FRAMES, WINDOW = ("cam-1", "cam-2", "cam-3"), 20, 8
MAX_PAYLOAD = 256 << 10  # the spec's payload limit here (COSTREAM_MAX_PAYLOAD_BYTES)

pytestmark = pytest.mark.integration


def good_records():
    per_stream = []
    for s, stream in enumerate(STREAMS):
        video = synthetic_video(num_frames=FRAMES, size=(96, 72), seed=s)
        per_stream.append(
            [
                contract.frame_record(
                    stream, i, 1_000 + 100 * i, contract.CT_JPEG, contract.encode_jpeg(rgb)
                )
                for i, rgb in enumerate(video.frames)
            ]
        )
    return [recs[i] for i in range(FRAMES) for recs in per_stream]  # interleaved


def bad_records():
    ok = contract.frame_record("cam-bad", 0, 1, contract.CT_JPEG, b"\xff\xd8\xff" + b"garbage" * 20)
    noise = np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)
    big = contract.frame_record("cam-big", 0, 1, contract.CT_PNG, contract.encode_png(noise))
    # a valid PNG, refused only for its size; small enough for the producers (1 MiB by default)
    assert MAX_PAYLOAD < len(big.value) < 1 << 20
    assert decode_record(big.key, big.value, big.headers).data.shape == (320, 320, 3)
    return {
        "oversized payload": big,
        "corrupt jpeg": ok,
        "missing headers": contract.OutgoingRecord(b"cam-bad", b"\xff\xd8\xff\xe0", []),
        "wrong content type": contract.OutgoingRecord(
            b"cam-bad",
            b"hello",
            [
                (contract.HEADER_FRAME_INDEX, b"1"),
                (contract.HEADER_TS_MS, b"2"),
                (contract.HEADER_CONTENT_TYPE, b"text/plain"),
            ],
        ),
        "malformed frame index": contract.OutgoingRecord(
            b"cam-bad",
            b"\xff\xd8\xff",
            [
                (contract.HEADER_FRAME_INDEX, b"-x"),
                (contract.HEADER_TS_MS, b"2"),
                (contract.HEADER_CONTENT_TYPE, b"image/jpeg"),
            ],
        ),
    }


def consume_all(bootstrap, topic, partitions=1):
    c = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=1500)
    c.assign([TopicPartition(topic, p) for p in range(partitions)])
    c.seek_to_beginning()
    out = list(c)
    c.close()
    return out


def strip_latency(value: bytes) -> dict:
    d = json.loads(value)
    d.pop("latency_ms")
    return d


def test_video_spec_end_to_end(kafka_broker, kafka_topics, tmp_path, monkeypatch):
    weights = tmp_path / "video_model.safetensors"
    save_model(
        get_model("oadtr_b1", d_in=128, d_model=32, window=WINDOW, heads=4, ffn=64, classes=5),
        weights,
    )
    t_in, t_out, t_dlq = kafka_topics(3, "in"), kafka_topics(2, "out"), kafka_topics(1, "dlq")
    for name, value in {
        "COSTREAM_BOOTSTRAP": kafka_broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_WEIGHTS": str(weights),
        "COSTREAM_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
    }.items():
        monkeypatch.setenv(name, value)

    good, bad = good_records(), bad_records()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, max_request_size=4 << 20)
    records = list(good)
    for i, rec in enumerate(bad.values()):  # sprinkle the bad records between good ones
        records.insert(7 + 9 * i, rec)
    for r in records:
        producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()

    run_spec(SPEC, "DirectRunner", until_idle_s=3.0)

    out = consume_all(kafka_broker.bootstrap, t_out, 2)
    dlq = consume_all(kafka_broker.bootstrap, t_dlq, 1)
    # every good frame exactly once, in order per stream
    by_stream = {s: [] for s in STREAMS}
    for m in out:
        by_stream[m.key.decode()].append(json.loads(m.value)["frame_index"])
    assert by_stream == {s: list(range(FRAMES)) for s in STREAMS}
    # every bad record exactly once, with its reason and stage, original bytes kept
    assert len(dlq) == len(bad)
    assert sorted(m.value for m in dlq) == sorted(r.value for r in bad.values())
    for m in dlq:
        h = dict(m.headers)
        assert h[contract.HEADER_STAGE] == b"decode" and h[contract.HEADER_ERROR]
    (big,) = [m for m in dlq if m.value == bad["oversized payload"].value]
    assert dict(big.headers)[contract.HEADER_ERROR].decode() == (
        f"The payload is {len(big.value)} bytes, above the limit of {MAX_PAYLOAD} bytes."
    )
    # identical scores to `costream score` on the same frames (latency aside)
    offline, offline_dead = score_records(SPEC, good)
    assert not offline_dead
    streaming = sorted(
        (strip_latency(m.value) for m in out), key=lambda d: (d["stream_id"], d["frame_index"])
    )
    assert streaming == [strip_latency(r.value) for r in offline]
    warm = [d["warm"] for d in streaming if d["stream_id"] == "cam-1"]
    assert warm == [i >= WINDOW - 1 for i in range(FRAMES)]
