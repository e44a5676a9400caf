"""Typed elements passed between costream's Beam steps (decode -> features -> inference).

Every element carries the original Kafka record (``key``, ``value``, ``headers``) so that any
later stage can dead-letter it with the original bytes (``DESIGN.md``, "Stream contract": every
input frame yields exactly one output record or one dead-letter record). Elements are plain
``NamedTuple`` s of primitives, bytes and numpy arrays: Beam encodes them with its pickling
fallback coder (``FastPrimitivesCoder`` -> pickle), which round-trips them exactly.

Tagged outputs of costream's PTransforms (:class:`~costream.transforms.decode.DecodeFrames`,
:class:`~costream.transforms.backbones.ExtractFeatures`):

* ``"main"`` (:data:`MAIN`): the stage's typed records;
* ``"dead_letter"`` (:data:`DEAD_LETTER`): :class:`~costream.connectors.codecs.OutgoingRecord`
  built by :func:`~costream.connectors.codecs.dead_letter_record` (original key, value, headers
  plus ``costream.error`` and ``costream.stage``), ready for ``WriteToKafka``.

Example:
    >>> import numpy as np
    >>> r = FeatureRecord("cam-1", 0, 1000, np.zeros(4, np.float32), 1001, b"cam-1", b"", [])
    >>> to_dead_letter(r, "boom", "inference").headers[-1]
    ('costream.stage', b'inference')
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from costream.connectors.codecs import OutgoingRecord, dead_letter_record

__all__ = [
    "DEAD_LETTER",
    "MAIN",
    "DecodedFrame",
    "FeatureRecord",
    "KINDS",
    "TaggedOutputs",
    "to_dead_letter",
]

MAIN = "main"
"""Tag of the main output of costream PTransforms."""
DEAD_LETTER = "dead_letter"
"""Tag of the dead-letter output (``OutgoingRecord`` elements)."""

KINDS = ("image", "audio", "features")
"""Values of :attr:`DecodedFrame.kind`."""


class DecodedFrame(NamedTuple):
    """One input record after decoding (output of ``DecodeFrames``).

    Attributes:
        stream_id: the record key as text.
        frame_index: ``costream.frame_index`` header (consecutive per stream).
        ts_ms: ``costream.ts_ms`` header, capture time in ms since the epoch.
        kind: ``"image"``, ``"audio"`` or ``"features"`` (see :data:`KINDS`).
        data: image: RGB ``uint8`` (H, W, 3), already resized to the backbone's input size when
            ``DecodeFrames`` was given one; audio: ``float32`` samples in [-1, 1), shape
            (samples,); features: ``float32`` (D,).
        rate: audio sample rate in Hz; 0 for images and features.
        arrival_ms: wall-clock time (ms since the epoch) at which the record was decoded; the
            start of the pipeline's latency measurement.
        key, value, headers: the original Kafka record, for dead letters at any later stage.
        timestamp_us: the Beam element timestamp of the input record (event time, microseconds
            since the epoch). Batching re-stamps elements; ``ExtractFeatures`` puts this back on
            its outputs wherever that does not make them late.
    """

    stream_id: str
    frame_index: int
    ts_ms: int
    kind: str
    data: np.ndarray
    rate: int
    arrival_ms: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_us: int = 0


class FeatureRecord(NamedTuple):
    """One frame's backbone feature vector (output of ``ExtractFeatures``, input of inference).

    Attributes:
        stream_id, frame_index, ts_ms: as in :class:`DecodedFrame`.
        features: ``float32`` (D,), D fixed by the backbone (``resnet18``: 512 x width,
            ``logmel``: n_mels x patch, mel-bin major; ``identity``: the record's dim).
        arrival_ms: as in :class:`DecodedFrame` (latency = now - arrival_ms).
        key, value, headers: the original Kafka record, for dead letters at the inference stage.
    """

    stream_id: str
    frame_index: int
    ts_ms: int
    features: np.ndarray
    arrival_ms: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def to_dead_letter(
    record: DecodedFrame | FeatureRecord, error: str | BaseException, stage: str
) -> OutgoingRecord:
    """The dead-letter record of ``record`` at ``stage`` (``decode`` / ``features`` / ``inference``)."""
    return dead_letter_record(record.key, record.value, record.headers, error, stage)


class TaggedOutputs(dict):
    """The outputs of a costream PTransform: a dict of PCollections with attribute access.

    ``out["main"]`` is ``out.main``, ``out["dead_letter"]`` is ``out.dead_letter``. Being a plain
    ``dict`` to Beam, it also serves as the named outputs of a Beam YAML provider.
    """

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"No output named {name!r}; the outputs are {', '.join(sorted(self))}."
            ) from None
