"""The features spec through Kafka on the portable path (what Flink runs), and the demo command."""

import json

import numpy as np
import pytest
from costream.connectors import contract
from costream.pipelines.cli import main
from costream.pipelines.runner import run_spec
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration


def test_features_spec_on_portable_runner(kafka_broker, kafka_topics, monkeypatch):
    t_in, t_out, t_dlq = kafka_topics(2, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    for k, v in {
        "COSTREAM_BOOTSTRAP": kafka_broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
    }.items():
        monkeypatch.setenv(k, v)
    rng = np.random.default_rng(0)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for i in range(20):
        for s in ("a", "b"):
            payload, ct = contract.encode_features(rng.standard_normal(64).astype(np.float32))
            r = contract.frame_record(s, i, 1000 + i, ct, payload)
            producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    bad, ct = contract.encode_features(np.zeros(63, np.float32))  # wrong dim for the model
    r = contract.frame_record("c", 0, 1, ct, bad)
    producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()

    run_spec(
        "pipelines/specs/features.yaml",
        "PortableRunner",
        ["--job_endpoint=embed", "--environment_type=LOOPBACK"],
        until_idle_s=3.0,
    )

    c = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, consumer_timeout_ms=1500)
    c.assign([TopicPartition(t_out, 0), TopicPartition(t_dlq, 0)])
    c.seek_to_beginning()
    msgs = list(c)
    out = [json.loads(m.value) for m in msgs if m.topic == t_out]
    dead = [m for m in msgs if m.topic == t_dlq]
    assert sorted((d["stream_id"], d["frame_index"]) for d in out) == [
        (s, i) for s in "ab" for i in range(20)
    ]
    assert len(dead) == 1 and dict(dead[0].headers)[contract.HEADER_STAGE] == b"features"


def test_demo_command_runs_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--seconds", "2", "--cameras", "2", "--fps", "10", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0
    assert (
        summary["detections"] == summary["frames_produced"] == 40 and summary["dead_letters"] == 0
    )
    assert (tmp_path / "cam-1.png").stat().st_size > 0 and (tmp_path / "cam-2.png").exists()
