"""The sub-clip assembler (each stream's last 1 s from 0.25 s chunks) and the vggish backbone."""

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from costream.connectors import contract
from costream.connectors.kafka import KafkaRecord
from costream.models.logmel import LogMelOptions
from costream.models.state import StateFormatError
from costream.models.vggish import (
    SUBCLIP_SAMPLES,
    TOKEN_HOP_SAMPLES,
    VGGishConfig,
    VGGishFrontEnd,
    log_mel_patch,
    save_vggish,
    vggish_patches,
)
from costream.transforms.backbones import BackboneConfig
from costream.transforms.feature_handler import record_features
from costream.transforms.features import ExtractFeatures
from costream.transforms.records import as_array
from costream.transforms.subclips import History, SubclipAssembler

HOP, CLIP = TOKEN_HOP_SAMPLES, SUBCLIP_SAMPLES  # 4000, 16000
SMALL = VGGishConfig(channels=(4, 8, 8, 8, 16, 16), fc=(32, 32))


def pcm(seconds, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 15), 1 << 15, int(seconds * 16000), dtype=np.int16)
    return x.astype(np.float32) / 32768.0  # what the L16 decoder yields


def run(assembler, chunks, indices=None, ts=None, stored=None):
    """Feed chunks through one stream's stored bytes; returns (sub-clips, events, stored)."""
    clips, events = [], []
    indices = range(len(chunks)) if indices is None else indices
    ts = [250 * i for i in indices] if ts is None else ts
    for chunk, i, t in zip(chunks, indices, ts):
        blob, clip, event = assembler.process(stored, i, t, chunk)
        stored = blob if blob is not None else stored
        clips.append(clip)
        events.append(event)
    return clips, events, stored


def test_history_bytes_round_trip_and_refusals():
    h = History(41, 1_700_000_000_123, pcm(0.75))
    blob = h.to_bytes()
    assert len(blob) == 26 + 4 * 12000  # a fixed header, then raw float32: no pickle
    back = History.from_bytes(blob)
    assert (back.last_index, back.last_ts_ms) == (41, 1_700_000_000_123)
    np.testing.assert_array_equal(back.samples, h.samples)
    assert back.samples.dtype == np.float32
    for bad in (blob[:10], b"XXXX" + blob[4:], blob[:-4]):
        with pytest.raises(StateFormatError):
            History.from_bytes(bad)


def test_first_chunks_are_padded_with_silence():
    x = pcm(1.0)
    chunks = x.reshape(4, HOP)
    clips, events, _ = run(SubclipAssembler(HOP, CLIP), chunks)
    assert events == ["reset", "next", "next", "next"]
    for k, clip in enumerate(clips):
        assert clip.shape == (CLIP,) and clip.dtype == np.float32
        np.testing.assert_array_equal(clip[: CLIP - (k + 1) * HOP], 0.0)
        np.testing.assert_array_equal(clip[CLIP - (k + 1) * HOP :], x[: (k + 1) * HOP])


def test_exact_one_second_windows_at_a_quarter_second_hop():
    x = pcm(3.0, seed=1)
    chunks = x.reshape(-1, HOP)  # 12 chunks
    clips, events, _ = run(SubclipAssembler(HOP, CLIP), chunks)
    assert len(clips) == len(chunks) and events[0] == "reset" and set(events[1:]) == {"next"}
    full = np.stack(clips[3:])  # chunk k >= 3 ends the full sub-clip k - 3
    for j, clip in enumerate(full):
        np.testing.assert_array_equal(clip, x[j * HOP : j * HOP + CLIP])
    want = vggish_patches(torch.from_numpy(x))  # (T, 96, 64) on the concatenated PCM
    assert want.shape[0] == full.shape[0] == 9
    torch.testing.assert_close(log_mel_patch(torch.from_numpy(full)), want, rtol=1e-5, atol=1e-5)


def test_a_gap_or_a_new_epoch_resets_and_a_repeat_keeps_the_history():
    x = pcm(2.0, seed=2)
    chunks = list(x.reshape(-1, HOP))  # 8 chunks
    a = SubclipAssembler(HOP, CLIP)
    _, _, stored = run(a, chunks[:5])
    # frame 6 after frame 4: a gap; the sub-clip is silence then the chunk
    blob, clip, event = a.process(stored, 6, 1500, chunks[6])
    assert event == "reset"
    np.testing.assert_array_equal(clip, np.concatenate([np.zeros(CLIP - HOP), chunks[6]]))
    # then frame 7 continues from frame 6 only
    _, clip, event = a.process(blob, 7, 1750, chunks[7])
    assert event == "next"
    np.testing.assert_array_equal(clip[-2 * HOP :], np.concatenate([chunks[6], chunks[7]]))
    np.testing.assert_array_equal(clip[: -2 * HOP], 0.0)
    # frame 0 again with a newer capture time: a new stream epoch
    _, clip, event = a.process(stored, 0, 99_000, chunks[0])
    assert event == "reset"
    np.testing.assert_array_equal(clip[:-HOP], 0.0)
    # frame 3 again, same capture time: a repeat; nothing to store, history untouched
    blob, clip, event = a.process(stored, 3, 750, chunks[3])
    assert (blob, event) == (None, "duplicate")
    np.testing.assert_array_equal(clip[:-HOP], x[2 * HOP : 5 * HOP])
    # damaged stored bytes: start again from silence
    _, clip, event = a.process(b"garbage", 5, 1250, chunks[5])
    assert event == "reset"
    with pytest.raises(ValueError, match="4000 samples"):
        a.process(stored, 5, 1250, chunks[5][:100])


def test_vggish_backbone_config():
    cfg = BackboneConfig("vggish", weights="random")
    assert (cfg.kind, cfg.feature_dim, cfg.chunk_samples, cfg.subclip_samples) == (
        "audio",
        128,
        4000,
        16000,
    )
    assert cfg.identity() == "vggish@random-seed0"
    with pytest.raises(ValueError, match="needs weights"):
        BackboneConfig("vggish")
    with pytest.raises(ValueError, match="16000 Hz"):
        BackboneConfig("vggish", weights="random", logmel=LogMelOptions(rate=8000))


def chunk_records(stream, x, start=0):
    return [
        contract.frame_record(
            stream,
            start + k,
            1_000 + 250 * (start + k),
            contract.audio_content_type(16000),
            contract.encode_l16(c),
        )
        for k, c in enumerate(x.reshape(-1, HOP))
    ]


def test_extract_features_vggish_assembles_each_stream_and_batches(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vggish_small.safetensors"
    save_vggish(VGGishFrontEnd(SMALL), path)
    cfg = BackboneConfig("vggish", weights=str(path))
    assert cfg.feature_dim == 128
    net = cfg.build()
    streams = {"a": pcm(1.5, seed=3), "b": pcm(1.5, seed=4)}
    records = [r for s, x in streams.items() for r in chunk_records(s, x)]
    short = contract.frame_record(  # 1600 samples: refused before it touches the history
        "a", 99, 1_000, contract.audio_content_type(16000), contract.encode_l16(pcm(0.1))
    )
    records.insert(3, short)
    good = [r for r in records if len(r.value) == 2 * HOP]
    # expected: the front-end on each stream's zero-padded last 1 s
    want = {}
    for s, x in streams.items():
        padded = np.concatenate([np.zeros(CLIP - HOP, np.float32), x])
        clips = np.stack([padded[k * HOP : k * HOP + CLIP] for k in range(len(x) // HOP)])
        with torch.inference_mode():
            feats = net(torch.from_numpy(clips)).numpy()
        want.update({(s, k): f for k, f in enumerate(feats)})
    offline = record_features(net, cfg, good)
    np.testing.assert_allclose(offline, np.stack([want[k] for k in sorted(want)]), atol=1e-5)

    kafka = [
        KafkaRecord(r.key, r.value, contract.as_headers(r.headers), "t", 0, i, 0)
        for i, r in enumerate(records)
    ]
    with beam.Pipeline(runner=FnApiRunner()) as p:  # in order per stream, as from Kafka
        out = (
            p
            | beam.Create(kafka, reshuffle=False)
            | ExtractFeatures("vggish", weights=str(path), batch_size=4)
        )

        def close(rows):
            got = {(r.stream_id, r.frame_index): as_array(r.features) for r in rows}
            assert set(got) == set(want)
            for k, v in got.items():
                np.testing.assert_allclose(v, want[k], atol=1e-5)

        assert_that(out["main"], close)
        stages = out["dead_letter"] | "Stage" >> beam.Map(
            lambda d: (d.stage, "4000 samples" in d.error, d.value == records[3].value)
        )
        assert_that(stages, equal_to([("features", True, True)]), label="dead")
