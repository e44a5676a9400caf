"""Typed rows passed between costream's Beam steps (decode -> features -> inference -> write).

Every element is a Beam schema: a ``NamedTuple`` with real annotations (this module does not use
``from __future__ import annotations``, which would hide them from Beam), registered with
``RowCoder``, so Beam YAML's ``Filter``, ``MapToFields``, ``Combine`` and ``Sql`` take it with
plain expressions and Beam encodes it without pickle. The rows, stage by stage:

* :class:`~costream.connectors.kafka_io.KafkaRecord` (``ReadFromKafka``);
* :class:`DecodedFrame` (``DecodeFrames``) and :class:`FeatureRecord` (``ExtractFeatures``):
  numpy arrays are fields of the logical type :data:`NDARRAY_URN`, carried as a row
  ``(dtype, shape, data)`` (numpy dtype string, dimensions, raw bytes) and numpy arrays again
  in Python;
* :class:`~costream.connectors.codecs.Detection` (``ContinualInference``);
* :class:`~costream.connectors.codecs.DeadLetter` (every ``dead_letter`` output).

Every row up to inference carries the original Kafka record (``key``, ``value``, ``headers``)
so that any later stage can dead-letter it with the original bytes (``DESIGN.md``, "Stream
contract": every input frame yields exactly one output record or one dead-letter record).
Headers are :class:`~costream.connectors.codecs.Header` rows. Beam's ``RowCoder`` decodes a
row into a class it generates from the schema: read fields by name, never by ``isinstance``.

Tagged outputs of costream's PTransforms (:class:`~costream.transforms.decode.DecodeFrames`,
:class:`~costream.transforms.backbones.ExtractFeatures`):

* ``"main"`` (:data:`MAIN`): the stage's typed records;
* ``"dead_letter"`` (:data:`DEAD_LETTER`): :class:`~costream.connectors.codecs.DeadLetter`
  rows built by :func:`to_dead_letter` (original key, value, headers, the reason and the
  stage), which ``WriteDeadLetters`` turns into the dead-letter topic's records.

Example:
    >>> import numpy as np
    >>> r = FeatureRecord("cam-1", 0, 1000, np.zeros(4, np.float32), 1001, b"cam-1", b"", [])
    >>> dead = to_dead_letter(r, "boom", "inference")
    >>> dead.stage, dead.error
    ('inference', 'boom')
"""

from collections.abc import Sequence
from typing import Any, NamedTuple, NewType, Optional

import apache_beam as beam
import numpy as np
from apache_beam.typehints.schemas import LogicalType, NoArgumentLogicalType
from costream.connectors import codecs, kafka_io  # noqa: F401 - kafka_io registers its rows
from costream.connectors.codecs import DeadLetter, Header

__all__ = [
    "DEAD_LETTER",
    "MAIN",
    "NDARRAY_URN",
    "DecodedFrame",
    "FeatureRecord",
    "KINDS",
    "NdArray",
    "TaggedOutputs",
    "feature_record",
    "to_dead_letter",
    "typed_outputs",
]

MAIN = "main"
"""Tag of the main output of costream PTransforms."""
DEAD_LETTER = "dead_letter"
"""Tag of the dead-letter output (:class:`~costream.connectors.codecs.DeadLetter` rows)."""

KINDS = ("image", "audio", "features")
"""Values of :attr:`DecodedFrame.kind`."""

NdArray = NewType("NdArray", np.ndarray)
"""A numpy array as a row field. Beam 2.62 would read ``np.ndarray`` itself as an iterable of
unknown elements, so fields name this type, which maps to the logical type below."""

NDARRAY_URN = "costream:logical_type:ndarray:v1"
"""Logical type of :data:`NdArray` fields; representation ``Row(dtype: str, shape:
List[int64], data: bytes)`` with ``dtype`` a numpy dtype string (``"<f4"``, ``"|u1"``) and
``data`` the C-order bytes."""


class NdArrayRow(NamedTuple):
    """How an :data:`NdArray` field travels: dtype string, dimensions, C-order bytes."""

    dtype: str
    shape: Sequence[int]
    data: bytes


@LogicalType.register_logical_type
class NdArrayType(NoArgumentLogicalType[NdArray, NdArrayRow]):
    """Beam logical type of :data:`NdArray` fields (:data:`NDARRAY_URN`)."""

    @classmethod
    def urn(cls) -> str:  # noqa: D102
        return NDARRAY_URN

    @classmethod
    def language_type(cls) -> type:  # noqa: D102
        return NdArray

    @classmethod
    def representation_type(cls) -> type:  # noqa: D102
        return NdArrayRow

    @classmethod
    def _from_typing(cls, typ: type) -> "NdArrayType":
        return cls()

    def to_representation_type(self, value: np.ndarray) -> NdArrayRow:  # noqa: D102
        value = np.ascontiguousarray(value)
        return NdArrayRow(value.dtype.str, value.shape, value.tobytes())

    def to_language_type(self, value: NdArrayRow) -> np.ndarray:  # noqa: D102
        # a writable copy, as pickling gave before: torch.from_numpy warns on read-only arrays
        flat = np.frombuffer(bytearray(value.data), dtype=np.dtype(value.dtype))
        return flat.reshape(tuple(value.shape))


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
    data: NdArray
    rate: int
    arrival_ms: int
    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]
    timestamp_us: int = 0


class FeatureRecord(NamedTuple):
    """One frame's backbone feature vector (output of ``ExtractFeatures``, input of inference).

    Attributes:
        stream_id, frame_index, ts_ms: as in :class:`DecodedFrame`.
        features: ``float32`` (D,), D fixed by the backbone (``resnet18``: 512 x width,
            ``logmel``: n_mels x patch, mel-bin major; ``identity``: the record's dim).
        arrival_ms: as in :class:`DecodedFrame` (latency = now - arrival_ms); None when
            unknown (the detection's ``latency_ms`` is then 0).
        key, value, headers: the original Kafka record, for dead letters at the inference stage.
    """

    stream_id: str
    frame_index: int
    ts_ms: int
    features: NdArray
    arrival_ms: Optional[int]  # noqa: UP045 - None: unknown (no latency measured)
    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]


for _row in (DecodedFrame, FeatureRecord):
    beam.coders.registry.register_coder(_row, beam.coders.RowCoder)


def feature_record(frame: DecodedFrame, features: np.ndarray) -> FeatureRecord:
    """The :class:`FeatureRecord` of ``frame`` (any row with its fields) with ``features``.

    The headers are rebuilt as :class:`~costream.connectors.codecs.Header`: a frame Beam
    decoded holds generated header rows, which would cost ~100 us each to pickle downstream.
    """
    arrival = frame.arrival_ms
    return FeatureRecord(
        frame.stream_id,
        frame.frame_index,
        frame.ts_ms,
        features,
        arrival if arrival is None or type(arrival) is int else int(arrival),
        frame.key,
        frame.value,
        codecs.as_headers(frame.headers),
    )


def to_dead_letter(
    record: DecodedFrame | FeatureRecord, error: str | BaseException, stage: str
) -> DeadLetter:
    """The dead-letter row of ``record`` at ``stage`` (``decode`` / ``features`` / ``inference``)."""
    return codecs.dead_letter(record.key, record.value, record.headers, error, stage)


def typed_outputs(outputs: Any, main: str = MAIN) -> "TaggedOutputs":
    """A ParDo's ``main`` and ``dead_letter`` outputs, the dead letters typed as rows.

    Beam 2.62 types a ParDo's tagged outputs ``Any`` (``with_output_types`` types the main
    one), so the dead-letter output is given its schema here: Beam YAML and ``Flatten`` then
    see :class:`~costream.connectors.codecs.DeadLetter` rows, and Beam encodes them with
    ``RowCoder``.
    """
    out = TaggedOutputs({main: outputs[main], DEAD_LETTER: outputs[DEAD_LETTER]})
    out[DEAD_LETTER].element_type = DeadLetter
    return out


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
