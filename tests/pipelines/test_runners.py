"""The features spec through Kafka on the portable path (what Flink runs) and on the embedded
runner by its name, what each runner name runs, and the demo command."""

import json

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract
from costream.pipelines.cli import build_parser, main
from costream.pipelines.runner import describe_runner, run_spec

pytestmark = pytest.mark.integration


def _produce_features(kafka_broker, kafka_topics, monkeypatch):
    """Two good streams of 20 frames and one bad record; returns (output, dead-letter) topics."""
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
    return t_out, t_dlq


def _check_output(kafka_broker, t_out, t_dlq):
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


def test_features_spec_on_portable_runner(kafka_broker, kafka_topics, monkeypatch):
    t_out, t_dlq = _produce_features(kafka_broker, kafka_topics, monkeypatch)
    run_spec(
        "pipelines/specs/features.yaml",
        "PortableRunner",
        ["--job_endpoint=embed", "--environment_type=LOOPBACK"],
        until_idle_s=3.0,
    )
    _check_output(kafka_broker, t_out, t_dlq)


def test_run_on_the_embedded_runner_by_its_name(kafka_broker, kafka_topics, monkeypatch, capsys):
    t_out, t_dlq = _produce_features(kafka_broker, kafka_topics, monkeypatch)
    spec = "pipelines/specs/features.yaml"
    args = ["run", spec, "--runner", "embedded", "--until-idle", "3", "--status-every", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "runner: embedded: Beam's FnApiRunner, in this process\n" in out
    _check_output(kafka_broker, t_out, t_dlq)


def test_runner_names_say_what_runs():
    assert build_parser().parse_args(["run", "s.yaml"]).runner == "embedded"
    for name in ("embedded", "DirectRunner", "FnApiRunner"):  # DirectRunner: kept, the same
        assert describe_runner(name) == "embedded: Beam's FnApiRunner, in this process"
    assert describe_runner("PortableRunner", ["--job_endpoint=embed"]) == (
        "PortableRunner on an embedded job server (in this process)"
    )
    assert describe_runner("PortableRunner", ["--job_endpoint", "h:8099"]).endswith("h:8099")
    assert describe_runner("FlinkRunner", ["--flink_master=h:8081"]).endswith("h:8081")
    with pytest.raises(ValueError, match="unknown runner 'Direct'; the runners are embedded, "):
        run_spec("pipelines/specs/features.yaml", "Direct")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "s.yaml", "--runner", "Direct"])


def test_demo_command_runs_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--seconds", "2", "--cameras", "2", "--fps", "10", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0
    assert (
        summary["detections"] == summary["frames_produced"] == 40 and summary["dead_letters"] == 0
    )
    assert (tmp_path / "cam-1.png").stat().st_size > 0 and (tmp_path / "cam-2.png").exists()
