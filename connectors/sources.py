"""Turn a media source into contract records (key, headers, payload) ready to publish.

A source is a video file, an audio file, a folder of images, a ``.npy`` features file of shape
(T, D), or ``synthetic:video`` / ``synthetic:audio``. Each record's ``costream.ts_ms`` is
``start_ms`` plus the media time, so record timestamps follow the wall clock when ``start_ms`` is
"now" (what the reader's idle-partition watermark rule assumes).

Audio is cut into :data:`DEFAULT_CHUNK_MS` (80 ms) chunks unless told otherwise: one token of the
``logmel`` backbone that ``pipelines/specs/audio.yaml`` runs (patch 8 x hop 160 = 1280 samples at
16 kHz); chunks of another length are dead-lettered there. ``costream produce`` uses the same
default.

Example:
    >>> src = open_source("synthetic:video", "cam-1", limit=3)
    >>> [rec.headers[0] for rec, _ in src.records]
    [('costream.frame_index', b'0'), ('costream.frame_index', b'1'), ('costream.frame_index', b'2')]
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from costream.connectors import contract, media, synthetic

__all__ = ["DEFAULT_CHUNK_MS", "IMAGE_CONTENT_TYPES", "Source", "open_source"]

IMAGE_CONTENT_TYPES = (contract.CT_JPEG, contract.CT_PNG)
SYNTHETIC_VIDEO_FRAMES = 300
SYNTHETIC_AUDIO_SECONDS = 30.0
DEFAULT_CHUNK_MS = 80
"""Audio chunk length in ms: one token of the ``logmel`` backbone (8 frames x hop 160 = 1280
samples = 80 ms at 16 kHz), the chunk ``pipelines/specs/audio.yaml`` takes."""


@dataclass
class Source:
    """Records of one stream: ``(record, media_time_s)`` pairs, plus a count when known."""

    kind: str  # "video", "audio", "images", "features"
    records: Iterator[tuple[contract.OutgoingRecord, float]]
    count: int | None


def open_source(
    source: str,
    stream_id: str,
    *,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    content_type: str | None = None,
    rate: int = 16000,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    limit: int | None = None,
    start_ms: int | None = None,
    jpeg_quality: int = 90,
    seed: int = 0,
    audio_stream: int | None = None,
) -> Source:
    """Open ``source`` and return its records lazily (see the module docstring).

    ``fps`` resamples video (default: the file's own rate; 10 for image folders and synthetic
    video); ``size=(width, height)`` resizes frames; ``content_type`` picks ``image/jpeg``
    (default) or ``image/png`` for frames and must be omitted or match for audio and features.
    Audio is resampled to ``rate`` Hz mono and cut into ``chunk_ms`` chunks (default
    :data:`DEFAULT_CHUNK_MS` = 80 ms, what the ``logmel`` backbone takes at 16 kHz; the last chunk
    of ``synthetic:audio`` is zero-padded to full length). ``limit`` caps the number of records.
    A media file with video gives its video frames unless ``audio_stream`` picks one of its
    audio streams by index (0: the first; e.g. the sound track of a video, for an audio model).
    """
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive number of records, got {limit}.")
    if audio_stream is not None and (
        isinstance(audio_stream, bool) or not isinstance(audio_stream, int) or audio_stream < 0
    ):
        raise ValueError(f"audio_stream must be an index >= 0, got {audio_stream!r}.")
    start = int(time.time() * 1000) if start_ms is None else int(start_ms)

    def frames_to_records(
        frames: Iterator[tuple[int, int, np.ndarray]],
    ) -> Iterator[tuple[contract.OutgoingRecord, float]]:
        ct = content_type or contract.CT_JPEG
        for i, (index, ts_ms, rgb) in enumerate(frames):
            if limit is not None and i >= limit:
                return
            payload = (
                contract.encode_jpeg(rgb, jpeg_quality)
                if ct == contract.CT_JPEG
                else contract.encode_png(rgb)
            )
            yield (
                contract.frame_record(stream_id, index, start + ts_ms, ct, payload),
                ts_ms / 1000.0,
            )

    def chunks_to_records(
        chunks: Iterator[tuple[int, int, np.ndarray]],
    ) -> Iterator[tuple[contract.OutgoingRecord, float]]:
        ct = contract.audio_content_type(rate)
        for i, (index, ts_ms, samples) in enumerate(chunks):
            if limit is not None and i >= limit:
                return
            yield (
                contract.frame_record(
                    stream_id, index, start + ts_ms, ct, contract.encode_l16(samples)
                ),
                ts_ms / 1000.0,
            )

    if content_type is not None and content_type not in IMAGE_CONTENT_TYPES:
        if not (
            content_type.startswith(contract.AUDIO_L16)
            or content_type.startswith(contract.FEATURES)
        ):
            raise ValueError(
                f"content type {content_type!r} is not supported; for frames use one of "
                f"{', '.join(IMAGE_CONTENT_TYPES)} (audio and features set theirs from the data)."
            )
    chunk_samples = max(1, int(round(rate * chunk_ms / 1000)))

    if source == "synthetic:video":
        _frames_only(content_type, source)
        n = limit or SYNTHETIC_VIDEO_FRAMES
        gen = (
            (i, ts, rgb)
            for i, ts, rgb, _ in synthetic.iter_synthetic_video(
                n, size or (320, 240), fps or 10.0, seed
            )
        )
        return Source("video", frames_to_records(gen), n)
    if source == "synthetic:audio":
        _audio_only(content_type, rate, source)
        audio = synthetic.synthetic_audio(SYNTHETIC_AUDIO_SECONDS, rate, seed)
        n_chunks = -(-len(audio.samples) // chunk_samples)
        gen = (
            (
                k,
                int(round(1000 * k * chunk_samples / rate)),
                np.pad(
                    audio.samples[k * chunk_samples : (k + 1) * chunk_samples],
                    (0, max(0, (k + 1) * chunk_samples - len(audio.samples))),
                ),
            )
            for k in range(n_chunks)
        )
        return Source("audio", chunks_to_records(gen), min(n_chunks, limit or n_chunks))
    if source.startswith("synthetic:"):
        raise ValueError(
            f"Unknown synthetic source {source!r}; use synthetic:video or synthetic:audio."
        )
    if not os.path.exists(source):
        raise media.MediaError(f"Source {source!r} does not exist.")
    if os.path.isdir(source):
        _frames_only(content_type, source)
        paths = media.list_images(source)
        step = 1000.0 / (fps or 10.0)
        gen = ((i, int(round(i * step)), media.read_image(p, size)) for i, p in enumerate(paths))
        return Source("images", frames_to_records(gen), min(len(paths), limit or len(paths)))
    if source.endswith(".npy"):
        feats = np.load(source, allow_pickle=False, mmap_mode="r")  # rows read as published
        if feats.ndim != 2 or feats.shape[1] == 0 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(
                f"A features file must hold a float array of shape (T, D); {source!r} has {feats.dtype} {feats.shape}."
            )
        ct = contract.features_content_type(int(feats.shape[1]))
        if content_type is not None and content_type != ct:
            raise ValueError(
                f"{source!r} holds features of content type {ct!r}, not {content_type!r}."
            )
        step = 1000.0 / (fps or 10.0)
        n = min(feats.shape[0], limit or feats.shape[0])

        def feature_records() -> Iterator[tuple[contract.OutgoingRecord, float]]:
            for i in range(n):
                payload, _ = contract.encode_features(feats[i])
                ts = int(round(i * step))
                yield contract.frame_record(stream_id, i, start + ts, ct, payload), ts / 1000.0

        return Source("features", feature_records(), n)
    import av

    try:
        with av.open(source) as probe:
            has_video, n_audio = bool(probe.streams.video), len(probe.streams.audio)
            n_video = probe.streams.video[0].frames if has_video else 0
    except av.FFmpegError as err:
        raise media.MediaError(f"ffmpeg cannot open {source!r}: {err}.") from err
    if audio_stream is not None and audio_stream >= n_audio:
        raise media.MediaError(
            f"{source!r} has {n_audio} audio stream(s), so no audio stream {audio_stream}"
            + (f"; valid: 0 to {n_audio - 1}." if n_audio else ".")
        )
    if (
        has_video
        and audio_stream is None
        and (content_type is None or content_type in IMAGE_CONTENT_TYPES)
    ):
        count = None if fps is not None or not n_video else min(n_video, limit or n_video)
        return Source("video", frames_to_records(media.read_video_frames(source, fps, size)), count)
    if n_audio:
        _audio_only(content_type, rate, source)
        chunks = media.read_audio_chunks(source, rate, chunk_samples, stream=audio_stream or 0)
        return Source("audio", chunks_to_records(chunks), None)
    raise media.MediaError(f"{source!r} has neither a video nor an audio stream.")


def _frames_only(content_type: str | None, source: str) -> None:
    if content_type is not None and content_type not in IMAGE_CONTENT_TYPES:
        raise ValueError(
            f"{source!r} gives frames; --content-type must be one of {', '.join(IMAGE_CONTENT_TYPES)}."
        )


def _audio_only(content_type: str | None, rate: int, source: str) -> None:
    if content_type is not None and content_type != contract.audio_content_type(rate):
        raise ValueError(
            f"{source!r} gives audio chunks of content type {contract.audio_content_type(rate)!r}; "
            f"got --content-type {content_type!r} (set the rate with --rate)."
        )
