import numpy as np
import pytest

from costream.connectors import contract, media, sources, synthetic


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    truth = synthetic.write_synthetic_video(path, num_frames=30, size=(64, 48), fps=10.0, seed=3)
    return path, truth


def test_video_file_decodes_every_frame_close_to_the_source(video_file):
    path, truth = video_file
    frames = list(media.read_video_frames(path))
    assert [i for i, _, _ in frames] == list(range(30))
    assert [ts for _, ts, _ in frames] == [100 * i for i in range(30)]
    for (_, _, got), want in zip(frames, truth.frames):
        assert got.shape == (48, 64, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 4  # H.264 at crf 18


def test_video_resample_and_resize(video_file):
    path, _ = video_file
    slow = list(media.read_video_frames(path, fps=5, size=(32, 24)))
    assert len(slow) == 15
    assert [ts for _, ts, _ in slow[:3]] == [0, 200, 400]
    assert slow[0][2].shape == (24, 32, 3)
    fast = list(media.read_video_frames(path, fps=20))
    assert [i for i, _, _ in fast] == list(range(len(fast)))
    # 2 slots per source frame over the clip's 3 s (issue 16: the slot at 2950 ms, within the
    # last frame's 100 ms, used to be dropped: 59)
    assert len(fast) == 60
    np.testing.assert_array_equal(fast[1][2], fast[2][2])  # slots 50 and 100 ms: source frame 1
    np.testing.assert_array_equal(fast[58][2], fast[59][2])  # 2900 and 2950 ms: the last frame


def test_audio_file_to_fixed_chunks(tmp_path):
    audio = synthetic.synthetic_audio(2.0, rate=16000, seed=1)
    path = tmp_path / "a.wav"
    media.write_audio_file(path, audio.samples, 16000)
    chunks = list(media.read_audio_chunks(path, 16000, 4000))
    assert [(i, ts) for i, ts, _ in chunks] == [(i, 250 * i) for i in range(8)]
    joined = np.concatenate([c for _, _, c in chunks])
    np.testing.assert_allclose(joined, audio.samples, atol=2e-4)
    # resample to 8 kHz, chunk of 3000 samples: 16000 samples -> 6 chunks, the last padded
    low = list(media.read_audio_chunks(path, 8000, 3000))
    assert len(low) == 6 and all(c.shape == (3000,) and c.dtype == np.float32 for _, _, c in low)
    assert np.all(low[-1][2][1000:] == 0)


def test_missing_and_wrong_media(tmp_path, video_file):
    with pytest.raises(media.MediaError, match="does not exist"):
        list(media.read_video_frames(tmp_path / "nope.mp4"))
    with pytest.raises(media.MediaError, match="no audio stream"):
        list(media.read_audio_chunks(video_file[0], 16000, 1600))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(media.MediaError, match="ffmpeg cannot open"):
        list(media.read_video_frames(bad))


def test_synthetic_video_is_deterministic_and_labelled():
    a = synthetic.synthetic_video(80, size=(80, 60), fps=10, seed=7)
    b = synthetic.synthetic_video(80, size=(80, 60), fps=10, seed=7)
    c = synthetic.synthetic_video(80, size=(80, 60), fps=10, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    assert not all(np.array_equal(x, y) for x, y in zip(a.frames, c.frames))
    assert {iv.label for iv in a.intervals} == {"red_square", "blue_circle"}
    for iv in a.intervals:
        assert a.labels[iv.start : iv.end] == [iv.label] * (iv.end - iv.start)
    # the visual event is there exactly during its interval: count strongly red / blue pixels
    for frame, label in zip(a.frames, a.labels):
        red = ((frame[..., 0] > 200) & (frame[..., 1] < 50) & (frame[..., 2] < 50)).sum()
        blue = ((frame[..., 2] > 200) & (frame[..., 0] < 50) & (frame[..., 1] < 80)).sum()
        assert (red > 100) == (label == "red_square")
        assert (blue > 100) == (label == "blue_circle")


def test_synthetic_audio_events():
    audio = synthetic.synthetic_audio(8.0, rate=8000, seed=2)
    assert audio.samples.dtype == np.float32 and audio.samples.shape == (64000,)
    assert {iv.label for iv in audio.intervals} == {"tone", "burst"}
    for iv in audio.intervals:
        seg = audio.samples[iv.start : iv.end]
        assert np.sqrt(np.mean(seg**2)) > 0.2
    labels = audio.chunk_labels(8000)
    assert len(labels) == 8 and "background" in labels


def test_sources_give_contract_records(tmp_path, video_file):
    src = sources.open_source(
        str(video_file[0]), "cam-9", start_ms=1_000_000, content_type="image/png"
    )
    recs = list(src.records)
    assert src.kind == "video" and src.count == 30 and len(recs) == 30
    frame = contract.decode_frame(recs[4][0].key, recs[4][0].value, recs[4][0].headers)
    assert (frame.stream_id, frame.frame_index, frame.ts_ms) == ("cam-9", 4, 1_000_400)
    assert contract.decode_payload(frame).shape == (48, 64, 3)

    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "f.npy", feats)
    recs = [
        r for r, _ in sources.open_source(str(tmp_path / "f.npy"), "s", fps=5, start_ms=0).records
    ]
    got = [contract.decode_payload(contract.decode_frame(r.key, r.value, r.headers)) for r in recs]
    np.testing.assert_array_equal(np.stack(got), feats)
    assert [dict(r.headers)[contract.HEADER_TS_MS] for r in recs] == [b"0", b"200", b"400"]

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i:03d}.png").write_bytes(contract.encode_png(np.full((4, 6, 3), i, np.uint8)))
    recs = [r for r, _ in sources.open_source(str(folder), "s", content_type="image/png").records]
    assert [
        contract.decode_payload(contract.decode_frame(r.key, r.value, r.headers))[0, 0, 0]
        for r in recs
    ] == [0, 1, 2]

    audio = sources.open_source("synthetic:audio", "mic", rate=8000, chunk_ms=500, limit=4)
    recs = [r for r, _ in audio.records]
    assert (
        len(recs) == 4
        and dict(recs[0].headers)["content-type"] == b"audio/L16;rate=8000;channels=1"
    )
    assert len(recs[0].value) == 2 * 4000

    with pytest.raises(ValueError, match="image/jpeg, image/png"):
        sources.open_source("synthetic:video", "s", content_type="audio/L16;rate=8000;channels=1")
    with pytest.raises(ValueError, match="synthetic:video or synthetic:audio"):
        sources.open_source("synthetic:nope", "s")
