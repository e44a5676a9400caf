"""Every shipped spec through Beam's own entry point, ``python -m apache_beam.yaml.main``, on the
in-process runner with a real broker: the specs unchanged, costream's types from the installed
providers file, detections equal to ``costream score`` and bad records dead-lettered."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from costream.connectors import contract, sources
from costream.connectors.synthetic import synthetic_video
from costream.pipelines.offline import score_records
from tests.pipelines.test_e2e import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "pipelines" / "specs"
FN_API_RUNNER = "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def features_records():
    rng = np.random.default_rng(0)
    good = []
    for i in range(20):
        for s in ("a", "b"):
            payload, ct = contract.encode_features(rng.standard_normal(64).astype(np.float32))
            good.append(contract.frame_record(s, i, 1000 + 40 * i, ct, payload))
    wrong, ct = contract.encode_features(np.zeros(63, np.float32))  # not the model's 64
    bad = [
        contract.frame_record("c", 0, 1, ct, wrong),
        contract.OutgoingRecord(b"c", b"\0" * 8, []),
    ]
    return good, bad, [b"features", b"decode"]


def video_records():
    per = []
    for s in range(2):
        video = synthetic_video(num_frames=20, size=(96, 72), seed=s)
        per.append([
            contract.frame_record(f"cam-{s}", i, 1000 + 100 * i, contract.CT_JPEG, contract.encode_jpeg(f))
            for i, f in enumerate(video.frames)
        ])  # fmt: skip
    good = [recs[i] for i in range(20) for recs in per]
    corrupt = contract.frame_record("cam-x", 0, 1, contract.CT_JPEG, b"\xff\xd8\xff" + b"junk" * 9)
    return good, [corrupt], [b"decode"]


def audio_records():
    src = sources.open_source("synthetic:audio", "mic", limit=24, start_ms=0, seed=7)
    good = [r for r, _ in src.records]
    return good, [contract.OutgoingRecord(b"mic", b"\0" * 16, [])], [b"decode"]


def run_yaml_main(spec, env, cwd, *args, timeout_s=300):
    cmd = [sys.executable, "-m", "apache_beam.yaml.main", f"--yaml_pipeline_file={spec}", *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def strip(value: bytes) -> dict:
    d = json.loads(value)
    d.pop("latency_ms")
    return d


@pytest.mark.parametrize(
    ("name", "records", "where"),
    [
        # from elsewhere: the include points at the installed file (`costream providers
        # --jinja`), the weights default (a relative path) is found in the package
        ("features", features_records, "elsewhere"),
        ("video", video_records, "repository"),
        ("audio", audio_records, "repository"),
    ],
)
def test_shipped_spec_runs_on_beams_yaml_main(
    name, records, where, kafka_broker, kafka_topics, tmp_path, monkeypatch
):
    spec = SPECS / f"{name}.yaml"
    t_in, t_out, t_dlq = kafka_topics(2, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    env = {
        "COSTREAM_BOOTSTRAP": kafka_broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "COSTREAM_STOP_AFTER_IDLE_S": "3",
    }
    for k in ("COSTREAM_WEIGHTS", "COSTREAM_AUDIO_WEIGHTS", "COSTREAM_MAX_PAYLOAD_BYTES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    good, bad, stages = records()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for r in [*good[:5], *bad, *good[5:]]:
        producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()
    producer.close()

    args = [FN_API_RUNNER]
    cwd = ROOT
    if where == "elsewhere":
        cwd = tmp_path
        flag = subprocess.run(
            [sys.executable, "-m", "costream.pipelines.cli", "providers", "--jinja"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        args.append(flag)
    run_yaml_main(spec, os.environ.copy(), cwd, *args)

    out = consume_all(kafka_broker.bootstrap, t_out)
    dlq = consume_all(kafka_broker.bootstrap, t_dlq)
    assert sorted(dict(m.headers)[contract.HEADER_STAGE] for m in dlq) == sorted(stages)
    assert sorted(m.value for m in dlq) == sorted(r.value for r in bad)
    monkeypatch.chdir(ROOT)
    expected, dead = score_records(spec, good)
    assert not dead
    got = sorted((strip(m.value) for m in out), key=lambda d: (d["stream_id"], d["frame_index"]))
    want = [strip(r.value) for r in expected]
    assert [(d["stream_id"], d["frame_index"]) for d in got] == [
        (d["stream_id"], d["frame_index"]) for d in want
    ]
    if name == "video":  # float32 features through a CNN, batched differently: to rounding
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.pop("scores"), w.pop("scores"), atol=1e-5)
            g["top"].pop("score"), w["top"].pop("score")
    assert got == want
    # the idle timer's trap: the in-process runner got the TTL check, so state lasted
    assert any(d["warm"] for d in got)


def test_beams_own_transforms_between_costreams(kafka_broker, kafka_topics, tmp_path, monkeypatch):
    """The features spec plus a branch of Beam's Filter over ContinualInference's detections
    (schema'd rows) into a second WriteDetectionsToKafka, through apache_beam.yaml.main."""
    branch = """\
    - type: Filter
      name: Warm
      input: ContinualInference
      config: {language: python, keep: "warm and stream_id == 'a'"}
    - type: WriteDetectionsToKafka
      name: WriteWarm
      input: Warm
      config: {bootstrap_servers: "${COSTREAM_BOOTSTRAP}", topic: "${WARM_TOPIC}"}
"""
    spec = tmp_path / "features_warm.yaml"
    spec.write_text((SPECS / "features.yaml").read_text() + branch)
    t_in, t_out, t_dlq, t_warm = (kafka_topics(1, p) for p in ("in", "out", "dlq", "warm"))
    env = {
        "COSTREAM_BOOTSTRAP": kafka_broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        "COSTREAM_STOP_AFTER_IDLE_S": "3",
        "WARM_TOPIC": t_warm,
    }
    monkeypatch.delenv("COSTREAM_WEIGHTS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    good, _, _ = features_records()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for r in good:
        producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()
    producer.close()

    run_yaml_main(spec, os.environ.copy(), ROOT, FN_API_RUNNER)

    out = [strip(m.value) for m in consume_all(kafka_broker.bootstrap, t_out)]
    every = {(d["stream_id"], d["frame_index"]): d for d in out}
    warm = [strip(m.value) for m in consume_all(kafka_broker.bootstrap, t_warm)]
    assert len(every) == len(good)
    want = sorted(k for k, d in every.items() if d["warm"] and k[0] == "a")
    assert want and sorted((d["stream_id"], d["frame_index"]) for d in warm) == want
    assert all(d == every[(d["stream_id"], d["frame_index"])] for d in warm)
