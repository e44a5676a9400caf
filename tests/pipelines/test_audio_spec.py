"""The shipped audio spec with every default: `costream produce synthetic:audio` records in,
the shipped demo audio model (pipelines/assets/demo_audio_model.safetensors) scoring them."""

from collections import Counter
from pathlib import Path

import pytest

from costream.connectors import contract, sources
from costream.connectors.synthetic import synthetic_audio
from costream.models.logmel import LogMelOptions
from costream.models.zoo import read_card
from costream.pipelines.offline import score_records
from costream.pipelines.spec import load_spec
from costream.transforms.backbones import BackboneConfig

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "pipelines" / "specs" / "audio.yaml"
WEIGHTS = ROOT / "pipelines" / "assets" / "demo_audio_model.safetensors"
SEED = 99_999  # neither a training (k) nor a validation (5000 + k) seed of the shipped model
CHUNKS = 150  # 12 s of audio, about 8 sound events


@pytest.fixture
def spec_defaults(monkeypatch):
    for name in ("COSTREAM_AUDIO_WEIGHTS", "COSTREAM_MAX_PAYLOAD_BYTES"):
        monkeypatch.delenv(name, raising=False)


def produced(limit, seed=SEED):
    """The records `costream produce synthetic:audio --seed SEED --limit N` publishes."""
    src = sources.open_source("synthetic:audio", "mic", limit=limit, start_ms=0, seed=seed)
    return [r for r, _ in src.records]


def test_default_audio_chunk_is_the_spec_backbone_chunk(spec_defaults):
    from costream.pipelines.commands.produce import DEFAULT_CHUNK_MS

    config = next(t["config"] for t in load_spec(SPEC)["pipeline"]["transforms"]
                  if t["type"] == "ExtractFeatures")  # fmt: skip
    backbone = BackboneConfig(config["backbone"], logmel=LogMelOptions(rate=config["rate"]))
    assert sources.DEFAULT_CHUNK_MS == DEFAULT_CHUNK_MS == backbone.chunk_samples * 1000 // 16000
    (rec,) = produced(1)
    frame = contract.decode_frame(rec.key, rec.value, rec.headers)
    assert contract.decode_payload(frame).shape == (backbone.chunk_samples,)
    assert frame.content_type.params["rate"] == str(backbone.rate)


def test_shipped_audio_spec_and_model_detect_synthetic_sounds(spec_defaults):
    card = read_card(WEIGHTS)
    assert card["classes"] == ["background", "tone", "burst"]
    n = card["window"]

    detections, dead = score_records(SPEC, produced(CHUNKS))

    assert not dead
    got = [contract.decode_detection(r.value) for r in detections]
    assert [(d.stream_id, d.frame_index, d.warm) for d in got] == [
        ("mic", i, i >= n - 1) for i in range(CHUNKS)
    ]  # exactly one detection per chunk, warm once a window is full
    assert {d.model for d in got} == {f"{card['continual_name']}@{card['sha256'][:12]}"}
    # The predicted class follows the ground truth. Always answering the most frequent class
    # would score `baseline` (about 0.5: half the audio is background), far below the bar.
    truth = synthetic_audio(sources.SYNTHETIC_AUDIO_SECONDS, 16000, SEED).chunk_labels(1280)
    warm = [(d.top_label, truth[d.frame_index]) for d in got if d.warm]
    accuracy = sum(p == t for p, t in warm) / len(warm)
    baseline = max(Counter(t for _, t in warm).values()) / len(warm)
    assert {t for _, t in warm} == {"background", "tone", "burst"}
    assert baseline < 0.65 and accuracy >= 0.9, (accuracy, baseline)
