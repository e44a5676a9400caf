"""The papers' audio setting end to end: 0.25 s PCM chunks through Kafka, pipelines/specs/gtzan.yaml
(vggish sub-clips of each stream's last 1 s, the shipped demo co_gtzan_b1) on the embedded runner.

The VGGish here is a small random one (128-d embeddings, narrow convs) written to a safetensors
file: the plumbing is the subject, and the demo model was trained on synthetic VGGish-like
embeddings, so its scores on random-VGGish features mean nothing anyway."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract, sources
from costream.connectors.synthetic import synthetic_audio
from costream.models.logmel import LogMelOptions
from costream.models.vggish import VGGishConfig, VGGishFrontEnd, save_vggish
from costream.models.zoo import read_card
from costream.pipelines.offline import score_records
from costream.pipelines.runner import run_spec
from costream.pipelines.spec import load_spec
from costream.transforms.backbones import BackboneConfig
from costream.transforms.decode import decode_record

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "pipelines" / "specs" / "gtzan.yaml"
MODEL = ROOT / "pipelines" / "assets" / "demo_gtzan_model.safetensors"
HOP, CHUNKS = 4000, 124  # 31 s: warm from chunk 119 (n = 120)
ENV = ("COSTREAM_VGGISH_WEIGHTS", "COSTREAM_GTZAN_WEIGHTS", "COSTREAM_MAX_PAYLOAD_BYTES")


@pytest.fixture
def small_vggish(tmp_path, monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(0)
    path = tmp_path / "vggish_small.safetensors"
    save_vggish(VGGishFrontEnd(VGGishConfig(channels=(4, 8, 8, 8, 16, 16), fc=(32, 32))), path)
    monkeypatch.setenv("COSTREAM_VGGISH_WEIGHTS", str(path))
    return path


def spec_backbone():
    config = next(t["config"] for t in load_spec(SPEC)["pipeline"]["transforms"]
                  if t["type"] == "ExtractFeatures")  # fmt: skip
    return BackboneConfig(
        config["backbone"], weights=config["weights"], logmel=LogMelOptions(rate=config["rate"])
    )


def chunks(stream, seconds, seed, skip=()):
    x = synthetic_audio(seconds, 16000, seed).samples
    n = len(x) // HOP
    return [
        contract.frame_record(
            stream,
            k,
            1_000 + 250 * k,
            contract.audio_content_type(16000),
            contract.encode_l16(x[k * HOP : (k + 1) * HOP]),
        )
        for k in range(n)
        if k not in skip
    ]


def test_produce_chunk_ms_250_gives_the_spec_backbone_chunk(small_vggish):
    cfg = spec_backbone()
    assert cfg.name == "vggish" and cfg.chunk_samples == HOP and cfg.feature_dim == 128
    assert read_card(MODEL)["feature_dim"] == cfg.feature_dim
    src = sources.open_source("synthetic:audio", "mic", chunk_ms=250, limit=2, start_ms=0)
    for rec, _ in src.records:
        frame = decode_record(rec.key, rec.value, rec.headers, now_ms=0)
        assert cfg.check_chunk(frame) is None


def consume_all(bootstrap, topic):
    c = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=1500)
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    out = list(c)
    c.close()
    return out


def strip_latency(value):
    d = json.loads(value)
    d.pop("latency_ms")
    return d


@pytest.mark.integration
def test_gtzan_spec_end_to_end(kafka_broker, kafka_topics, small_vggish, monkeypatch):
    card = read_card(MODEL)
    n = card["window"]
    assert n == 120 and card["feature_dim"] == 128
    t_in, t_out, t_dlq = kafka_topics(1, "in"), kafka_topics(1, "out"), kafka_topics(1, "dlq")
    for name, value in {
        "COSTREAM_BOOTSTRAP": kafka_broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_START": "earliest",
    }.items():
        monkeypatch.setenv(name, value)
    mic = chunks("mic", CHUNKS * 0.25, seed=7)
    other = chunks("mic-2", 3.0, seed=8, skip={5})  # a lost chunk: the history resets
    short = contract.frame_record(  # 1000 samples: not a 0.25 s chunk
        "mic-2", 12, 4_000, contract.audio_content_type(16000), contract.encode_l16(np.zeros(1000))
    )
    good = mic + other
    records = mic[:40] + other[:6] + [short] + mic[40:] + other[6:]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for r in records:
        producer.send(t_in, key=r.key, value=r.value, headers=r.headers)
    producer.flush()

    run_spec(SPEC, "DirectRunner", until_idle_s=3.0)

    out = [json.loads(m.value) for m in consume_all(kafka_broker.bootstrap, t_out)]
    dlq = consume_all(kafka_broker.bootstrap, t_dlq)
    # one detection per good chunk, in order per stream; warm once a 30 s window is full
    per_stream = {}
    for d in out:
        per_stream.setdefault(d["stream_id"], []).append((d["frame_index"], d["warm"]))
    assert per_stream == {
        "mic": [(i, i >= n - 1) for i in range(CHUNKS)],
        "mic-2": [(i, False) for i in range(12) if i != 5],
    }
    assert {d["model"] for d in out} == {f"{card['continual_name']}@{card['sha256'][:12]}"}
    assert {len(d["scores"]) for d in out} == {10}
    # the short chunk: one dead letter, stage features, original bytes
    assert [(m.value, dict(m.headers)[contract.HEADER_STAGE]) for m in dlq] == [
        (short.value, b"features")
    ]
    assert b"4000 samples" in dict(dlq[0].headers)[contract.HEADER_ERROR]
    # the same scores as `costream score` on the same chunks (latency aside)
    offline, offline_dead = score_records(SPEC, good)
    assert not offline_dead
    streaming = sorted(
        (strip_latency(m.value) for m in consume_all(kafka_broker.bootstrap, t_out)),
        key=lambda d: (d["stream_id"], d["frame_index"]),
    )
    scored = [strip_latency(r.value) for r in offline]
    # VGGish's kernels round differently by batch size (1 ulp of a feature, seen at batches of 4
    # and more), and batches form differently when streaming: equal up to that
    pick = ("stream_id", "frame_index", "ts_ms", "labels", "warm", "model")
    assert [[d[k] for k in pick] for d in streaming] == [[d[k] for k in pick] for d in scored]
    np.testing.assert_allclose(
        [d["scores"] for d in streaming], [d["scores"] for d in scored], rtol=1e-5, atol=1e-7
    )
