"""`costream broker`, `costream produce` and `costream consume` against a real broker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract
from costream.pipelines.cli import build_parser, main

pytestmark = pytest.mark.integration
AUDIO_SPEC = Path(__file__).resolve().parents[2] / "pipelines" / "specs" / "audio.yaml"


def read_all(bootstrap, topic, expected, timeout_s=10):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got += [r for rs in c.poll(300).values() for r in rs]
    c.close()
    return got


def test_commands_are_registered():
    help_text = build_parser().format_help()
    for name in ("broker", "produce", "consume"):
        assert name in help_text


def test_broker_command_runs_in_the_foreground_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "costream.pipelines.cli", "broker", "--topic", "frames:2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("bootstrap: 127.0.0.1:"), line + proc.stderr.read()
        bootstrap = line.split(" ", 1)[1]
        assert proc.stdout.readline().strip() == "topic: frames (2 partitions)"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        assert "frames" in admin.list_topics()
        admin.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopping" in out


def test_produce_synthetic_video_creates_topic_and_publishes_contract_records(kafka_broker, capsys):
    topic = f"cli-{time.time_ns()}"
    rc = main(["produce", "synthetic:video", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
               "--stream-id", "cam-7", "--limit", "12", "--size", "64x48", "--fps", "25",
               "--partitions", "2", "--no-progress"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr()
    assert "published 12 records" in out.out and "created topic" in out.err
    try:
        got = read_all(kafka_broker.bootstrap, topic, 12)
        assert len(got) == 12 and {r.partition for r in got} == {
            got[0].partition
        }  # one key, one partition
        frames = [
            contract.decode_frame(r.key, r.value, r.headers)
            for r in sorted(got, key=lambda r: r.offset)
        ]
        assert [f.frame_index for f in frames] == list(range(12))
        assert [f.ts_ms - frames[0].ts_ms for f in frames] == [40 * i for i in range(12)]
        assert all(
            r.timestamp == int(contract.header_value(r.headers, contract.HEADER_TS_MS)) for r in got
        )
        assert contract.decode_payload(frames[0]).shape == (48, 64, 3)
        assert frames[0].content_type.media_type == "image/jpeg" and frames[0].stream_id == "cam-7"
    finally:
        kafka_broker.delete_topics([topic])


def test_produce_audio_realtime_and_existing_topic(kafka_broker, kafka_topics, capsys, tmp_path):
    topic = kafka_topics()
    t0 = time.monotonic()
    rc = main(["produce", "synthetic:audio", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
               "--stream-id", "mic", "--rate", "8000", "--chunk-ms", "100", "--limit", "4",
               "--realtime", "--no-progress"])  # fmt: skip
    assert rc == 0 and "created topic" not in capsys.readouterr().err
    assert time.monotonic() - t0 >= 0.3  # 4 chunks of 100 ms, paced
    got = read_all(kafka_broker.bootstrap, topic, 4)
    pcm = [contract.decode_payload(contract.decode_frame(r.key, r.value, r.headers)) for r in got]
    assert [p.shape for p in pcm] == [(800,)] * 4

    feats = tmp_path / "f.npy"
    np.save(feats, np.ones((3, 5), np.float32))
    rc = main(["produce", str(feats), "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
               "--stream-id", "feat", "--no-progress"])  # fmt: skip
    assert rc == 0 and len(read_all(kafka_broker.bootstrap, topic, 7)) == 7


@pytest.mark.parametrize("chunk_ms", [None, 1000])
def test_produce_default_audio_chunks_run_through_the_audio_spec(chunk_ms, tmp_path, monkeypatch):
    # `costream produce synthetic:audio` with its defaults publishes exactly these records; the
    # broker only carries them, so they go straight through the audio spec (`costream score`).
    from costream.models.zoo import get_model, save_model
    from costream.pipelines.commands.produce import open_source_from_args
    from costream.pipelines.offline import score_records

    argv = ["produce", "synthetic:audio", "--bootstrap", "127.0.0.1:1", "--topic", "t",
            "--stream-id", "mic", "--limit", "6"]  # fmt: skip
    args = build_parser().parse_args(
        argv + ([] if chunk_ms is None else ["--chunk-ms", str(chunk_ms)])
    )
    records = [r for r, _ in open_source_from_args(args).records]
    weights = tmp_path / "audio.safetensors"
    save_model(get_model("audio_b2", d_model=16, window=4, heads=2, ffn=16, channels=8), weights)
    monkeypatch.setenv("COSTREAM_AUDIO_WEIGHTS", str(weights))

    detections, dead = score_records(AUDIO_SPEC, records)
    if chunk_ms is None:  # the default: one detection per chunk, nothing dead-lettered
        assert not dead
        got = [contract.decode_detection(r.value) for r in detections]
        assert [(d.stream_id, d.frame_index, d.warm) for d in got] == [
            ("mic", i, i >= 3) for i in range(6)
        ]
    else:  # the old default, 1 s chunks: the logmel backbone refuses every one
        assert not detections and len(dead) == 6
        for r in dead:
            h = dict(r.headers)
            assert h[contract.HEADER_STAGE] == b"features"
            assert b"takes chunks of 1280 samples" in h[contract.HEADER_ERROR]
            assert b"holds 16000 samples" in h[contract.HEADER_ERROR]


def test_produce_refuses_bad_sources(kafka_broker, capsys, tmp_path):
    args = ["--bootstrap", kafka_broker.bootstrap, "--topic", "x", "--stream-id", "s"]
    assert main(["produce", str(tmp_path / "missing.mp4"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["produce", "synthetic:video", "--content-type", "image/gif", *args]) == 2
    assert "not supported" in capsys.readouterr().err
    assert main(["produce", "synthetic:video", "--size", "big", *args]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_consume_prints_detections_as_json_lines(kafka_broker, kafka_topics, capsys):
    topic = kafka_topics()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for i in range(3):
        det = contract.make_detection("cam", i, 1000 + i, [0.2, 0.8], ["bg", "act"], warm=i > 0,
                                    model="m@0123", latency_ms=1.0)  # fmt: skip
        r = contract.detection_record(det)
        producer.send(topic, key=r.key, value=r.value, headers=r.headers).get(5)
    dl = contract.dead_letter_record(b"cam", b"\xff", [], "The payload is not a JPEG.", "decode")
    producer.send(topic, key=dl.key, value=dl.value, headers=dl.headers).get(5)
    producer.send(topic, key=b"cam", value=b"{oops").get(5)
    producer.close()

    assert (
        main(
            [
                "consume",
                "--bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                topic,
                "--from-beginning",
                "--max",
                "3",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["frame_index"] for x in lines] == [0, 1, 2]
    assert lines[0]["top"] == {"label": "act", "score": 0.8} and lines[0]["v"] == 1

    t0 = time.monotonic()
    assert (
        main(
            [
                "consume",
                "--bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                topic,
                "--from-beginning",
                "--timeout",
                "0.5",
            ]
        )
        == 0
    )
    assert time.monotonic() - t0 < 10
    out = capsys.readouterr()
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert len(lines) == 5
    assert (
        lines[3]["dead_letter"]
        and lines[3]["stage"] == "decode"
        and lines[3]["error"] == "The payload is not a JPEG."
    )
    assert "not valid JSON" in lines[4]["invalid"]
    assert "1 of 5 records were not valid detections" in out.err

    assert (
        main(
            [
                "consume",
                "--bootstrap",
                kafka_broker.bootstrap,
                "--topic",
                "nope-" + topic,
                "--max",
                "1",
            ]
        )
        == 1
    )
    assert "does not exist" in capsys.readouterr().err


def test_cli_end_to_end_with_subprocesses(kafka_broker, kafka_topics):
    topic = kafka_topics()
    env = dict(os.environ)
    res = subprocess.run(
        [sys.executable, "-m", "costream.pipelines.cli", "produce", "synthetic:video", "--bootstrap",
         kafka_broker.bootstrap, "--topic", topic, "--stream-id", "s", "--limit", "5", "--size", "32x24"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "5/5" in res.stderr  # the progress bar
