"""Issue 16 item 4 papercuts in the media readers: laziness, audio tracks, rotation, resampling."""

import types

import av
import numpy as np
import pytest

from costream.connectors import media, sources


def _write_video(path, frames, fps, *, codec="mpeg4", rotation=None, audio=None, rate=16000):
    """frames: (H, W, 3) uint8; audio: list of mono float32 arrays, one audio stream each."""
    with av.open(str(path), mode="w") as c:
        v = c.add_stream(codec, rate=fps)
        v.height, v.width = frames[0].shape[:2]
        v.pix_fmt = "yuv420p"
        if rotation is not None:
            v.set_display_rotation(rotation)
        tracks = []
        for _ in audio or []:
            a = c.add_stream("pcm_s16le", rate=rate)
            a.layout = "mono"
            tracks.append(a)
        for rgb in frames:
            c.mux(v.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(v.encode(None))
        for a, samples in zip(tracks, audio or []):
            pcm = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            for start in range(0, pcm.shape[1], 1600):
                f = av.AudioFrame.from_ndarray(
                    pcm[:, start : start + 1600], format="s16", layout="mono"
                )
                f.sample_rate, f.pts = rate, start
                c.mux(a.encode(f))
            c.mux(a.encode(None))


def _grey(n, size=(32, 32)):
    return [np.full((size[1], size[0], 3), (i * 7) % 250, np.uint8) for i in range(n)]


# -- 1: frames come lazily ---------------------------------------------------------------------


def test_frame_sources_are_lazy_iterators(tmp_path):
    path = tmp_path / "v.mkv"
    _write_video(path, _grey(20), 10)
    frames = media.read_video_frames(path, fps=5)
    assert isinstance(frames, types.GeneratorType)
    assert next(frames)[0] == 0  # the first frame comes before the file is read to the end
    src = sources.open_source(str(path), "s", start_ms=0)
    assert isinstance(src.records, types.GeneratorType)
    assert isinstance(media.read_audio_chunks(path, 16000, 1600), types.GeneratorType)


# -- 2: the audio track of a video file ---------------------------------------------------------


def test_audio_stream_of_a_video_file(tmp_path):
    rate = 16000
    t = np.arange(rate, dtype=np.float32) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    quiet = np.full(rate, 0.25, np.float32)
    path = tmp_path / "av.mkv"
    _write_video(path, _grey(10), 10, audio=[tone, quiet], rate=rate)

    first = np.concatenate([c for _, _, c in media.read_audio_chunks(path, rate, 1600)])
    second = np.concatenate([c for _, _, c in media.read_audio_chunks(path, rate, 1600, stream=1)])
    np.testing.assert_allclose(first[:rate], tone, atol=2e-4)
    np.testing.assert_allclose(second[:rate], quiet, atol=2e-4)
    with pytest.raises(media.MediaError, match="no audio stream 2; valid: 0 to 1"):
        list(media.read_audio_chunks(path, rate, 1600, stream=2))

    # sources: the video by default, audio stream N when asked
    assert sources.open_source(str(path), "s", start_ms=0).kind == "video"
    src = sources.open_source(str(path), "s", start_ms=0, chunk_ms=100, audio_stream=1)
    recs = [r for r, _ in src.records]
    assert src.kind == "audio" and len(recs) == 10
    assert dict(recs[0].headers)["content-type"] == b"audio/L16;rate=16000;channels=1"
    pcm = np.frombuffer(recs[3].value, ">i2").astype(np.float32) / 32767
    np.testing.assert_allclose(pcm, 0.25, atol=2e-4)
    with pytest.raises(media.MediaError, match="no audio stream 5"):
        sources.open_source(str(path), "s", audio_stream=5)
    with pytest.raises(ValueError, match="audio_stream must be an index"):
        sources.open_source(str(path), "s", audio_stream=-1)


# -- 3: rotation metadata -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rotation", "corner"),
    [(None, (0, 0)), (-90, (0, -1)), (90, (-1, 0)), (180, (-1, -1))],
)
def test_rotated_video_comes_out_upright(tmp_path, rotation, corner):
    # stored 64 wide x 32 high with a white block top-left; the display matrix (a phone's
    # `rotate: 90` tag is -90 here: a quarter turn clockwise) says how to show it
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:8, :8] = 255
    path = tmp_path / "r.mp4"
    _write_video(path, [stored] * 3, 10, codec="libx264", rotation=rotation)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation % 360 == (rotation or 0) % 360  # PyAV wrote it
    frames = [rgb for _, _, rgb in media.read_video_frames(path)]
    quarter = rotation in (90, -90)
    assert frames[0].shape == ((64, 32, 3) if quarter else (32, 64, 3))
    rgb = frames[0].astype(int)
    h, w = rgb.shape[:2]
    r = 0 if corner[0] == 0 else h - 8
    c = 0 if corner[1] == 0 else w - 8
    assert rgb[r : r + 8, c : c + 8].mean() > 200  # the white block's corner after turning
    assert rgb.mean() < 60  # and nowhere else
    if quarter:  # size is (width, height) of the upright frame
        assert next(media.read_video_frames(path, size=(16, 32)))[2].shape == (32, 16, 3)


# -- 4: resampling keeps the last frames ----------------------------------------------------------


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_resampling_ten_seconds_at_60_fps(tmp_path, ext):
    path = tmp_path / f"v60.{ext}"
    _write_video(path, _grey(600, (16, 16)), 60)
    assert len(list(media.read_video_frames(path))) == 600
    for fps, want in ((30, 300), (60, 600), (25, 250), (120, 1200)):
        got = list(media.read_video_frames(path, fps=fps))
        assert len(got) == want, (fps, len(got))
        assert [i for i, _, _ in got] == list(range(want))
        assert got[-1][1] == round(1000 * (want - 1) / fps)
    # at the source rate every frame once, in order (Matroska rounds times to milliseconds)
    same = [rgb[0, 0, 0] for _, _, rgb in media.read_video_frames(path, fps=60)]
    want = [rgb[0, 0, 0] for _, _, rgb in media.read_video_frames(path)]
    assert same == want
