"""Media files to frames and PCM chunks (PyAV decodes, OpenCV resizes), and back for tests.

Frames are RGB ``uint8`` arrays of shape (H, W, 3); audio samples are mono ``float32`` in [-1, 1].
Timestamps are milliseconds from the start of the media (add a capture start time to publish).
Payload encoders (JPEG, PNG, L16) live in :mod:`costream.connectors.contract` beside their decoders.

Example:
    >>> for index, ts_ms, rgb in read_video_frames("clip.mp4", fps=10, size=(320, 240)):  # doctest: +SKIP
    ...     print(index, ts_ms, rgb.shape)
    0 0 (240, 320, 3)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import cv2
import numpy as np

from costream.connectors import contract

__all__ = [
    "IMAGE_EXTENSIONS",
    "MediaError",
    "list_images",
    "read_audio_chunks",
    "read_image",
    "read_video_frames",
    "write_audio_file",
    "write_video_file",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class MediaError(ValueError):
    """A media file cannot be opened or has no stream of the wanted kind."""


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise MediaError(f"Media file {os.fspath(path)!r} does not exist.")
    try:
        return av.open(os.fspath(path))
    except av.FFmpegError as err:
        raise MediaError(f"ffmpeg cannot open {os.fspath(path)!r}: {err}.") from err


def _check_size(size: tuple[int, int] | None) -> None:
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be (width, height) with positive values, got {size!r}.")


def _resize(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    shrinking = size[0] * size[1] < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _upright(rgb: np.ndarray, rotation: int | float | None) -> np.ndarray:
    """Turn a decoded frame the way its display matrix says (``VideoFrame.rotation``).

    ``rotation`` is the counter-clockwise angle in degrees that the display matrix applies (a
    phone's ``rotate: 90`` tag reads back as -90, a quarter turn clockwise), as ffmpeg's own
    ``autorotate`` applies it. Only quarter turns occur in practice; others are rounded to one.
    """
    k = int(round((rotation or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def read_video_frames(
    path: str | os.PathLike[str],
    fps: float | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Decode the first video stream of any container ffmpeg reads, one frame at a time.

    Yields ``(index, ts_ms, rgb)`` with consecutive indices from 0, lazily: memory does not grow
    with the file's length. Frames come out upright: a display matrix (the ``rotate`` tag of
    phone videos) is applied as ffmpeg's ``autorotate`` does, so a portrait clip stored as
    landscape yields portrait frames. Without ``fps`` every decoded frame is yielded with its
    presentation time. With ``fps`` the output is resampled to a fixed grid: output frame ``k``
    has ``ts_ms = round(1000 * k / fps)`` and shows the first source frame whose time is at or
    after that instant (frames are dropped to slow down, repeated to speed up); the grid covers
    the clip's whole duration (the last frame lasts its own duration), so 10 s at any source rate
    give ``10 * fps`` frames. Times are compared within one tick of the stream's time base,
    because containers store rounded times (Matroska keeps milliseconds: frame 599 of a 60 fps
    clip is at 9.983 s, not 9.98333 s). ``size=(width, height)`` resizes the upright frame with
    OpenCV (area interpolation when shrinking).
    """
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None, got {fps!r}.")
    _check_size(size)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{os.fspath(path)!r} has no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        tick = float(stream.time_base) if stream.time_base else 0.0
        tol = max(1e-6, min(tick, 0.25 / rate))  # one tick, never a sizeable part of a frame
        t0: float | None = None
        index = 0
        last: tuple[float, float, av.VideoFrame] | None = None  # (time, duration, frame)

        def rgb_of(frame: av.VideoFrame) -> np.ndarray:
            return _resize(_upright(frame.to_ndarray(format="rgb24"), frame.rotation), size)

        for n, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else n / rate
            t0 = t if t0 is None else t0
            t -= t0
            if fps is None:
                yield index, int(round(t * 1000)), rgb_of(frame)
                index += 1
                continue
            duration = float(frame.duration * frame.time_base) if frame.duration else 0.0
            last = (t, duration if duration > 0 else 1.0 / rate, frame)
            # Emit this frame for every grid slot it is the first frame at or after.
            rgb: np.ndarray | None = None
            while index / fps <= t + tol:
                if rgb is None:
                    rgb = rgb_of(frame)
                yield index, int(round(1000 * index / fps)), rgb
                index += 1
        # the slots within the last frame's duration show the last frame (only set with an fps)
        if last is not None and fps is not None:
            t, duration, frame = last
            rgb = None
            while index / fps < t + duration - tol:
                if rgb is None:
                    rgb = rgb_of(frame)
                yield index, int(round(1000 * index / fps)), rgb
                index += 1


def read_audio_chunks(
    path: str | os.PathLike[str], rate: int, chunk_samples: int, *, stream: int = 0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Decode one audio stream, mix to mono, resample to ``rate`` Hz, cut into chunks.

    ``stream`` is the index among the file's audio streams (0: the first, also the audio track
    of a video file). Yields ``(index, ts_ms, samples)`` lazily with ``samples`` float32 of shape
    (chunk_samples,) and ``ts_ms = round(1000 * index * chunk_samples / rate)``. The last chunk
    is zero-padded.

    Raises:
        MediaError: the file has no audio stream, or fewer than ``stream + 1``.
    """
    if rate <= 0 or chunk_samples <= 0:
        raise ValueError(
            f"rate and chunk_samples must be positive, got {rate} and {chunk_samples}."
        )
    if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
        raise ValueError(f"stream must be an audio stream index >= 0, got {stream!r}.")
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{os.fspath(path)!r} has no audio stream.")
        if stream >= len(container.streams.audio):
            raise MediaError(
                f"{os.fspath(path)!r} has {len(container.streams.audio)} audio stream(s), so no "
                f"audio stream {stream}; valid: 0 to {len(container.streams.audio) - 1}."
            )
        audio = container.streams.audio[stream]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pending: list[np.ndarray] = []
        buffered = 0
        index = 0

        def frames() -> Iterator[av.AudioFrame]:
            for frame in container.decode(audio):
                yield from resampler.resample(frame)
            yield from resampler.resample(None)  # flush the resampler

        for out in frames():
            pending.append(out.to_ndarray().reshape(-1).astype(np.float32))
            buffered += pending[-1].shape[0]
            if buffered < chunk_samples:
                continue
            data = np.concatenate(pending)
            n_full = data.shape[0] // chunk_samples
            for i in range(n_full):
                yield (
                    index,
                    int(round(1000 * index * chunk_samples / rate)),
                    data[i * chunk_samples : (i + 1) * chunk_samples].copy(),
                )
                index += 1
            rest = data[n_full * chunk_samples :]
            pending, buffered = [rest], rest.shape[0]
        if buffered:
            last = np.zeros(chunk_samples, np.float32)
            rest = np.concatenate(pending)
            last[: rest.shape[0]] = rest
            yield index, int(round(1000 * index * chunk_samples / rate)), last


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """Image files in ``folder`` (by extension), sorted by name."""
    if not os.path.isdir(folder):
        raise MediaError(f"{os.fspath(folder)!r} is not a folder.")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise MediaError(
            f"Folder {os.fspath(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return [os.path.join(folder, n) for n in names]


def read_image(
    path: str | os.PathLike[str],
    size: tuple[int, int] | None = None,
    *,
    max_pixels: int = contract.DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read one image file as RGB ``uint8`` (H, W, 3), optionally resized to (width, height).

    The file must be JPEG, PNG, BMP or WebP (:data:`costream.connectors.contract.IMAGE_FORMATS`).
    Its size is read from its header first, and an image of more than ``max_pixels`` pixels is
    refused with a :class:`MediaError` before it is decoded (a small file may declare a huge
    image: a decompression bomb).
    """
    _check_size(size)
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as err:
        raise MediaError(f"Cannot read the image {name!r}: {err.strerror or err}.") from err
    try:
        contract.check_image_size(data, max_pixels)
    except contract.CodecError as err:
        raise MediaError(f"Cannot read the image {name!r}: {err}") from err
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError(f"OpenCV cannot read the image {name!r}.")
    return _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def write_video_file(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 18,
) -> int:
    """Write RGB frames (all of one even-sized shape) to a video file; returns the frame count."""
    count = 0
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for rgb in frames:
            if count == 0:
                stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def write_audio_file(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM (WAV for ``.wav`` paths)."""
    x = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    pcm = np.round(x * 32767).astype(np.int16).reshape(1, -1)
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        step = 4096
        for start in range(0, pcm.shape[1], step):
            frame = av.AudioFrame.from_ndarray(
                pcm[:, start : start + step], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
