"""The consumed record :class:`KafkaRecord` and the Beam coders of the records that cross stages.

:class:`KafkaRecord`, :class:`~costream.connectors.contract.Detection` and
:class:`~costream.connectors.contract.DeadLetter` travel as Beam rows (``RowCoder``);
:class:`~costream.connectors.contract.OutgoingRecord` keeps its own binary coder
(:class:`OutgoingRecordCoder`). Importing this module registers them.
"""

import struct
from collections.abc import Sequence
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.coders import Coder

from costream.connectors.contract import DeadLetter, Detection, Header, OutgoingRecord

__all__ = ["KafkaRecord", "OutgoingRecordCoder"]


class KafkaRecord(NamedTuple):
    """One consumed Kafka record, a Beam schema. ``timestamp_ms``: the record timestamp (ms).

    ``headers`` are :class:`~costream.connectors.contract.Header` rows (``key``, ``value``), which
    unpack and compare like ``(name, value)`` pairs.
    """

    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


# --- coders ---------------------------------------------------------------------------------
# KafkaRecord, Detection and DeadLetter travel as Beam rows (RowCoder: portable, readable by
# Java and by Beam SQL, and faster here than the hand-written coder KafkaRecord had: 1.2 + 1.9
# us vs 1.9 + 3.8 us to encode + decode a features record, benchmarks/bench_rows.py). RowCoder
# decodes into classes it generates from the schema, so code downstream reads fields by name
# and never relies on isinstance (see _kind). OutgoingRecord keeps its own coder: it is the
# writers' input, not a stage boundary, and takes plain (name, value) header pairs, which rows
# cannot.

_U32 = struct.Struct(">I")


def _put_bytes(out: list[bytes], b: bytes | None) -> None:
    if b is None:
        out.append(b"\xff\xff\xff\xff")
    else:
        out.append(_U32.pack(len(b)))
        out.append(b)


def _get_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if n == 0xFFFFFFFF:
        return None, pos
    return bytes(buf[pos : pos + n]), pos + n


class OutgoingRecordCoder(Coder):
    """Binary coder for :class:`OutgoingRecord` (length-prefixed fields, big-endian)."""

    def encode(self, value: OutgoingRecord) -> bytes:
        out: list[bytes] = []
        _put_bytes(out, value.key)
        _put_bytes(out, value.value)
        out.append(_U32.pack(len(value.headers)))
        for name, header in value.headers:
            _put_bytes(out, name.encode("utf-8"))
            _put_bytes(out, bytes(header))
        return b"".join(out)

    def decode(self, encoded: bytes) -> OutgoingRecord:
        buf = memoryview(encoded)
        key, pos = _get_bytes(buf, 0)
        value, pos = _get_bytes(buf, pos)
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        headers = []
        for _ in range(count):
            name, pos = _get_bytes(buf, pos)
            header, pos = _get_bytes(buf, pos)
            headers.append(Header((name or b"").decode("utf-8"), header or b""))
        return OutgoingRecord(key, value or b"", headers)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return OutgoingRecord


for _row in (KafkaRecord, Detection, DeadLetter):
    beam.coders.registry.register_coder(_row, beam.coders.RowCoder)
beam.coders.registry.register_coder(OutgoingRecord, OutgoingRecordCoder)
