"""Typed rows passed between costream's Beam steps (decode -> features -> inference -> write).

Every element is a Beam schema: a ``NamedTuple`` with real annotations (this module does not use
``from __future__ import annotations``, which would hide them from Beam), registered with
``RowCoder``, so Beam YAML's ``Filter``, ``MapToFields``, ``Combine`` and ``Sql`` take it with
plain expressions and Beam encodes it without pickle. The rows, stage by stage:

* :class:`~costream.connectors.kafka.records.KafkaRecord` (``ReadFromKafka``);
* :class:`DecodedFrame` (``DecodeFrames``) and :class:`FeatureRecord` (``ExtractFeatures``):
  their numpy arrays are :class:`NdArray` rows ``(dtype, shape, data)`` (numpy's dtype string,
  the dimensions, the C-order bytes), made by :func:`ndarray_row` and read by :func:`as_array`.
  Plain schema types, so any Beam worker and any SDK (Java, SQL) decodes them; a Python
  logical type would need costream imported in every SDK harness before it builds a bundle's
  coders, which harnesses do not do by themselves;
* :class:`~costream.connectors.contract.Detection` (``ContinualInference``);
* :class:`~costream.connectors.contract.DeadLetter` (every ``dead_letter`` output).

Every row up to inference carries the original Kafka record (``key``, ``value``, ``headers``)
so that any later stage can dead-letter it with the original bytes (``docs/stream-contract.md``:
every input frame yields exactly one output record or one dead-letter record).
Headers are :class:`~costream.connectors.contract.Header` rows. Beam's ``RowCoder`` decodes a
row into a class it generates from the schema: read fields by name, never by ``isinstance``.

Tagged outputs of costream's PTransforms (:class:`~costream.transforms.decode.DecodeFrames`,
:class:`~costream.transforms.features.ExtractFeatures`):

* ``"main"`` (:data:`MAIN`): the stage's typed records;
* ``"dead_letter"`` (:data:`DEAD_LETTER`): :class:`~costream.connectors.contract.DeadLetter`
  rows built by :func:`to_dead_letter` (original key, value, headers, the reason and the
  stage), which ``WriteDeadLetters`` turns into the dead-letter topic's records.

Example:
    >>> import numpy as np
    >>> r = FeatureRecord("cam-1", 0, 1000, ndarray_row(np.zeros(4, np.float32)), 1001,
    ...                   b"cam-1", b"", [])
    >>> as_array(r.features).shape, r.features.dtype
    ((4,), '<f4')
    >>> dead = to_dead_letter(r, "boom", "inference")
    >>> dead.stage, dead.error
    ('inference', 'boom')
"""

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import apache_beam as beam
import numpy as np

import costream.connectors.kafka.records  # noqa: F401 - registers the coders of the contract's rows
from costream.connectors.contract import DeadLetter, Header, as_headers, dead_letter

__all__ = [
    "DEAD_LETTER",
    "MAIN",
    "DecodedFrame",
    "FeatureRecord",
    "KINDS",
    "NdArray",
    "TaggedOutputs",
    "as_array",
    "feature_record",
    "ndarray_row",
    "to_dead_letter",
    "typed_outputs",
]

MAIN = "main"
"""Tag of the main output of costream PTransforms."""
DEAD_LETTER = "dead_letter"
"""Tag of the dead-letter output (:class:`~costream.connectors.contract.DeadLetter` rows)."""

KINDS = ("image", "audio", "features")
"""Values of :attr:`DecodedFrame.kind`."""


class NdArray(NamedTuple):
    """A numpy array as a row: numpy's dtype string (``"<f4"``, ``"|u1"``), shape, C-order bytes.

    Build it with :func:`ndarray_row`, read it with :func:`as_array`.
    """

    dtype: str
    shape: Sequence[int]
    data: bytes


def ndarray_row(array: np.ndarray) -> NdArray:
    """``array`` as an :class:`NdArray` row (one copy of its bytes)."""
    a = np.ascontiguousarray(array)
    return NdArray(a.dtype.str, a.shape, a.tobytes())


def as_array(value: Any) -> np.ndarray:
    """The numpy array of an :class:`NdArray` row (or any row with its fields); an array as is.

    The array owns a writable copy of the bytes, as one that was pickled does
    (``torch.from_numpy`` warns on read-only arrays).
    """
    if isinstance(value, np.ndarray):
        return value
    flat = np.frombuffer(bytearray(value.data), dtype=np.dtype(value.dtype))
    return flat.reshape(tuple(value.shape))


class DecodedFrame(NamedTuple):
    """One input record after decoding (output of ``DecodeFrames``).

    Attributes:
        stream_id: the record key as text.
        frame_index: ``costream.frame_index`` header (consecutive per stream).
        ts_ms: ``costream.ts_ms`` header, capture time in ms since the epoch.
        kind: ``"image"``, ``"audio"`` or ``"features"`` (see :data:`KINDS`).
        data: an :class:`NdArray` row (:func:`as_array` gives the numpy array): image: RGB
            ``uint8`` (H, W, 3), already resized to the backbone's input size when
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
        features: ``float32`` (D,) as an :class:`NdArray` row, D fixed by the backbone
            (``resnet18``: 512 x width, ``logmel``: n_mels x patch, mel-bin major;
            ``identity``: the record's dim).
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


def feature_record(frame: DecodedFrame, features: np.ndarray | NdArray) -> FeatureRecord:
    """The :class:`FeatureRecord` of ``frame`` (any row with its fields) with ``features``.

    ``features``: a numpy array or an :class:`NdArray` row. The headers are rebuilt as
    :class:`~costream.connectors.contract.Header`: a frame Beam decoded holds header rows of a
    class Beam generated, which cost ~100 us each to pickle.
    """
    if isinstance(features, np.ndarray):
        features = ndarray_row(features)
    arrival = frame.arrival_ms
    return FeatureRecord(
        frame.stream_id,
        frame.frame_index,
        frame.ts_ms,
        features,
        arrival if arrival is None or type(arrival) is int else int(arrival),
        frame.key,
        frame.value,
        as_headers(frame.headers),
    )


def to_dead_letter(
    record: DecodedFrame | FeatureRecord, error: str | BaseException, stage: str
) -> DeadLetter:
    """The dead-letter row of ``record`` at ``stage`` (``decode`` / ``features`` / ``inference``)."""
    return dead_letter(record.key, record.value, record.headers, error, stage)


def typed_outputs(outputs: Any, main: str = MAIN) -> "TaggedOutputs":
    """A ParDo's ``main`` and ``dead_letter`` outputs, the dead letters typed as rows.

    Beam 2.62 types a ParDo's tagged outputs ``Any`` (``with_output_types`` types the main
    one), so the dead-letter output is given its schema here: Beam YAML and ``Flatten`` then
    see :class:`~costream.connectors.contract.DeadLetter` rows, and Beam encodes them with
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
