"""Decode stream-contract records into :class:`~costream.transforms.records.DecodedFrame` s.

``decode_record`` is the plain logic (validate key and headers, decode the JPEG/PNG, PCM or
feature payload, resize images to the backbone's input size); ``DecodeFrames`` is the Beam step
around it. Records that do not follow the contract go to the ``dead_letter`` output as
:class:`~costream.connectors.contract.DeadLetter` rows with stage ``decode`` and the reason as one
sentence; nothing is dropped.

Example:
    >>> import numpy as np
    >>> from costream.connectors.contract import CT_PNG, encode_png, frame_record
    >>> rec = frame_record("cam-1", 7, 1000, CT_PNG, encode_png(np.zeros((30, 40, 3), np.uint8)))
    >>> f = decode_record(rec.key, rec.value, rec.headers, image_size=16, now_ms=5)
    >>> f.stream_id, f.frame_index, f.kind, f.data.shape, f.data.dtype, f.arrival_ms
    ('cam-1', 7, 'image', (16, 16, 3), '|u1', 5)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import apache_beam as beam
import cv2
import numpy as np

from costream.connectors.contract import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_PIXELS,
    CodecError,
    Header,
    as_headers,
    dead_letter,
    decode_frame,
    decode_payload,
    media_kind,
)
from costream.transforms.counters import Counter
from costream.transforms.records import (
    DEAD_LETTER,
    MAIN,
    DecodedFrame,
    TaggedOutputs,
    ndarray_row,
    typed_outputs,
)

__all__ = ["DecodeFrames", "decode_record", "image_size_hw", "resize_rgb"]

_LOG = logging.getLogger(__name__)
_METRICS_NS = "costream.decode"


def image_size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise an image size: ``224`` -> ``(224, 224)``; ``(h, w)`` is kept (height first)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw
    ):
        raise ValueError(
            f"An image size must be a positive int or a (height, width) pair of them, got {size!r}."
        )
    return int(hw[0]), int(hw[1])


def resize_rgb(rgb: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize RGB ``uint8`` (H, W, 3) to ``size`` = (height, width) (no crop, aspect not kept).

    Shrinking by 2x or more (either side) uses area interpolation (no aliasing); smaller
    shrinks and enlarging use bilinear, which at under 2x still reads every source pixel and
    costs a fifth of OpenCV's area filter at a fractional ratio. Same size is a copy-free
    pass-through. Deterministic: the same image always gives the same bytes.
    """
    h, w = image_size_hw(size)
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    shrink = h <= rgb.shape[0] and w <= rgb.shape[1]
    large = rgb.shape[0] >= 2 * h or rgb.shape[1] >= 2 * w
    interp = cv2.INTER_AREA if shrink and large else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


def _split_record(element: Any) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of a Kafka record or a plain ``(key, value, headers)`` tuple.

    A record is a ``KafkaRecord``, an ``OutgoingRecord`` or any row with those three fields.
    """
    try:
        if hasattr(element, "headers"):
            key, value, headers = element.key, element.value, element.headers
        else:
            key, value, headers = element[0], element[1], element[2]
    except (AttributeError, TypeError, IndexError, KeyError):
        raise TypeError(
            f"DecodeFrames expects Kafka records (KafkaRecord, OutgoingRecord, a row with "
            f"fields key, value and headers, or a (key, value, headers) tuple), got "
            f"{type(element).__name__}."
        ) from None
    return key, value, list(headers or [])


def decode_record(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    *,
    image_size: int | Sequence[int] | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    now_ms: int | None = None,
    timestamp_us: int = 0,
) -> DecodedFrame:
    """Validate and decode one input record.

    Args:
        key: the record key (the stream id in UTF-8).
        value: the payload (stream contract, ``docs/stream-contract.md``).
        headers: the record headers (frame index, ts, content type).
        image_size: resize images to this (height, width) (an int means square); None keeps them.
        max_payload_bytes: largest payload accepted.
        max_pixels: largest image accepted, in pixels; read from the image header, so a larger
            image is refused (``ImageSizeError``) before anything is decoded.
        now_ms: arrival time to stamp (ms since the epoch); None reads the wall clock.
        timestamp_us: the Beam element timestamp to keep (microseconds).

    Raises:
        CodecError: a subclass whose message says, in one sentence, what is wrong.
    """
    headers = list(headers)
    frame = decode_frame(key, value, headers, max_payload_bytes=max_payload_bytes)
    kind = media_kind(frame.content_type.media_type)  # decode_frame let only known kinds in
    assert kind is not None
    at_least = None if image_size is None else image_size_hw(image_size)
    data = decode_payload(frame, max_pixels=max_pixels, at_least=at_least)
    if kind == "image" and at_least is not None:
        data = resize_rgb(data, at_least)
    rate = int(frame.content_type.params["rate"]) if kind == "audio" else 0
    arrival = int(time.time() * 1000) if now_ms is None else int(now_ms)
    return DecodedFrame(
        frame.stream_id,
        frame.frame_index,
        frame.ts_ms,
        kind,
        ndarray_row(data),
        rate,
        arrival,
        None if key is None else bytes(key),
        b"" if value is None else bytes(value),
        # ReadFromKafka's headers are Header rows of bytes already: keep them (our own list)
        cast("list[Header]", headers)
        if all(type(h) is Header and type(h[1]) is bytes for h in headers)
        else as_headers(headers),
        int(timestamp_us),
    )


class _DecodeDoFn(beam.DoFn):
    """Decode one record; bad records go to ``dead_letter`` (stage ``decode``) with the reason.

    What a decoded frame becomes is :meth:`then`'s (the frame itself here), so a step that
    follows decoding frame by frame can share its Beam step (``ExtractFeatures``' identity).
    """

    def __init__(
        self,
        image_size: tuple[int, int] | None,
        max_payload_bytes: int,
        max_pixels: int,
    ) -> None:
        self._image_size = image_size
        self._max_payload_bytes = max_payload_bytes
        self._max_pixels = max_pixels
        self._decoded = Counter(_METRICS_NS, "decoded")
        self._dead = Counter(_METRICS_NS, "decode_dead_letters")

    def process(self, element: Any, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        key, value, headers = _split_record(element)
        try:
            frame = decode_record(
                key,
                value,
                headers,
                image_size=self._image_size,
                max_payload_bytes=self._max_payload_bytes,
                max_pixels=self._max_pixels,
                timestamp_us=timestamp.micros,
            )
        except Exception as err:  # bad bytes are data: route them, never stop the pipeline
            if not isinstance(err, CodecError):
                _LOG.warning("Unexpected %s while decoding a record: %s", type(err).__name__, err)
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(key, value, headers, err, "decode")
            )
            return
        self._decoded.inc()
        yield self.then(frame)

    def then(self, frame: DecodedFrame) -> Any:
        """What a decoded frame is emitted as (an element, or a ``TaggedOutput``)."""
        return frame


class DecodeFrames(beam.PTransform):
    """Kafka records -> :class:`DecodedFrame` (``main``) + dead letters (``dead_letter``).

    Input elements: ``KafkaRecord`` (from ``ReadFromKafka``), ``OutgoingRecord`` or
    ``(key, value, headers)`` tuples following the stream contract.

    Outputs (a :class:`~costream.transforms.records.TaggedOutputs` dict):

    * ``main``: :class:`~costream.transforms.records.DecodedFrame`, images resized to
      ``image_size`` (height, width) when given;
    * ``dead_letter``: :class:`~costream.connectors.contract.DeadLetter` rows, the original
      key/value/headers with ``stage = "decode"`` and ``error`` = the reason.

    Counters (namespace ``costream.decode``; also in :func:`costream.transforms.counters.snapshot`):
    ``decoded`` and ``decode_dead_letters``.

    Example:
        >>> import apache_beam as beam  # doctest: +SKIP
        >>> out = records | "Decode" >> DecodeFrames(image_size=224)  # doctest: +SKIP
        >>> frames, bad = out.main, out.dead_letter  # doctest: +SKIP
    """

    def __init__(
        self,
        image_size: int | Sequence[int] | None = None,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__()
        self._image_size = None if image_size is None else image_size_hw(image_size)
        if max_payload_bytes <= 0 or max_pixels <= 0:
            raise ValueError(
                f"max_payload_bytes and max_pixels must be positive, got {max_payload_bytes} "
                f"and {max_pixels}."
            )
        self._max_payload_bytes = int(max_payload_bytes)
        self._max_pixels = int(max_pixels)

    def expand(self, pcoll: beam.PCollection) -> TaggedOutputs:
        out = pcoll | "DecodeRecords" >> beam.ParDo(
            _DecodeDoFn(self._image_size, self._max_payload_bytes, self._max_pixels)
        ).with_output_types(DecodedFrame).with_outputs(DEAD_LETTER, main=MAIN)
        return typed_outputs(out)
