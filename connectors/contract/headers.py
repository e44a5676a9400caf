"""Record headers of the stream contract: their names, the :class:`Header` row, typed parsing.

Input records carry ``costream.frame_index`` (decimal ASCII), ``costream.ts_ms`` (decimal ASCII,
ms since the epoch) and ``content-type``; dead letters add ``costream.error`` and
``costream.stage``; a value cut to fit the broker is marked by ``costream.truncated``,
``costream.original_size`` and ``costream.original_sha256``; records re-read to rebuild state
carry :data:`REPLAY_HEADER`. The full list and what each means: ``docs/stream-contract.md``.

:class:`Header` is a ``NamedTuple`` with real annotations (no ``from __future__ import
annotations`` in this module, on purpose), so Beam derives a schema from it.

Example:
    >>> headers = [Header(HEADER_FRAME_INDEX, b"7"), (HEADER_TS_MS, b"1000")]
    >>> frame_index_of(headers), ts_ms_of(headers), header_value(headers, HEADER_ERROR)
    (7, 1000, None)
"""

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from costream.connectors.contract.errors import MalformedHeaderError, MissingHeaderError

__all__ = [
    "HEADER_CONTENT_TYPE",
    "HEADER_DROPPED_HEADERS",
    "HEADER_ERROR",
    "HEADER_FRAME_INDEX",
    "HEADER_ORIGINAL_KEY_SHA256",
    "HEADER_ORIGINAL_KEY_SIZE",
    "HEADER_ORIGINAL_SHA256",
    "HEADER_ORIGINAL_SIZE",
    "HEADER_SOURCE",
    "HEADER_STAGE",
    "HEADER_TRUNCATED",
    "HEADER_TS_MS",
    "MAX_FRAME_INDEX",
    "MAX_TS_MS",
    "REPLAY_HEADER",
    "Header",
    "Headers",
    "as_headers",
    "decimal_header",
    "frame_index_of",
    "header_value",
    "is_replay",
    "required_header",
    "ts_ms_of",
]

HEADER_FRAME_INDEX = "costream.frame_index"
HEADER_TS_MS = "costream.ts_ms"
HEADER_CONTENT_TYPE = "content-type"
HEADER_ERROR = "costream.error"
HEADER_STAGE = "costream.stage"
HEADER_TRUNCATED = "costream.truncated"
HEADER_ORIGINAL_SIZE = "costream.original_size"
HEADER_ORIGINAL_SHA256 = "costream.original_sha256"
HEADER_SOURCE = "costream.source"
"""Dead letters written by the reader: where the record was, ``topic/partition/offset``."""
HEADER_DROPPED_HEADERS = "costream.dropped_headers"
HEADER_ORIGINAL_KEY_SIZE = "costream.original_key_size"
HEADER_ORIGINAL_KEY_SHA256 = "costream.original_key_sha256"
REPLAY_HEADER = "costream.replay"
"""Header the reader puts on records it re-reads to rebuild state (``warm_restart_frames``).

Downstream stages step their state with such records but emit nothing for them. The reader
strips this header from every record it reads from the broker, so only its own marks count.
"""


MAX_FRAME_INDEX = 2**63 - 1
"""Largest ``costream.frame_index``: detections carry it as a JSON number, which Java and Go
consumers read as a signed 64-bit integer."""
MAX_TS_MS = 253_402_300_799_999
"""Largest ``costream.ts_ms``: 9999-12-31T23:59:59.999Z, the last millisecond that ISO-8601
timestamps, Python's ``datetime`` and ``java.time`` formatting all hold (four-digit years); a
capture time beyond it is a unit mistake (microseconds or nanoseconds), not a date."""


_DECIMAL = re.compile(rb"\A(?:0|[1-9][0-9]*)\Z")


class Header(NamedTuple):
    """One Kafka record header. A plain ``(name, value)`` pair compares equal to it.

    Beam schemas have no tuple type, so headers are a list of these rows (``List[Row(key:
    str, value: bytes)]``), which unpack like the pairs kafka-python takes.
    """

    key: str
    value: bytes


Headers = Sequence[tuple[str, bytes]]


def as_headers(headers: Iterable[tuple[str, bytes]] | None) -> list[Header]:
    """``headers`` as a list of :class:`Header` (values as ``bytes``), order kept.

    Rows decoded by Beam's ``RowCoder`` come back as generated classes; rebuilding them as
    ``Header`` keeps what a stage emits cheap to pickle and equal to what it received.
    """
    return [Header(k, v if type(v) is bytes else _header_bytes(k, v)) for k, v in headers or ()]


def _header_bytes(name: str, value: object) -> bytes:
    if value is None:  # kafka-python's reading of a header without a value
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"Header {name!r} has a {type(value).__name__} value; headers hold bytes.")


def header_value(headers: Headers, name: str) -> bytes | None:
    """The value of header ``name``, or None when absent; two different values are an error."""
    found: bytes | None = None
    for key, value in headers:
        if key != name:
            continue
        if value is None or not isinstance(value, bytes | bytearray):
            raise MalformedHeaderError(f"Header {name!r} has no bytes value (got {value!r}).")
        if found is not None and bytes(value) != found:
            raise MalformedHeaderError(
                f"Header {name!r} appears twice with different values {found!r} and {bytes(value)!r}."
            )
        found = bytes(value)
    return found


def required_header(headers: Headers, name: str) -> bytes:
    """The value of header ``name``; raises :class:`MissingHeaderError` when it is absent."""
    value = header_value(headers, name)
    if value is None:
        raise MissingHeaderError(f"Required header {name!r} is missing.")
    return value


def decimal_header(headers: Headers, name: str, largest: int, why: str) -> int:
    """A decimal ASCII header in ``0..largest``; ``why`` says where ``largest`` comes from."""
    raw = required_header(headers, name)
    if not _DECIMAL.match(raw):
        raise MalformedHeaderError(
            f"Header {name!r} is {raw[:40]!r}; expected a non-negative decimal integer in ASCII."
        )
    # compare digit counts first: int() of a 5000-digit header would itself raise ValueError
    if len(raw) > len(str(largest)) or int(raw) > largest:
        raise MalformedHeaderError(
            f"Header {name!r} is {raw[:40].decode('ascii')}{'...' if len(raw) > 40 else ''}, "
            f"above the largest allowed value {largest} ({why})."
        )
    return int(raw)


_INDEX_WHY = "2**63 - 1, the largest signed 64-bit integer"
_TS_WHY = "9999-12-31T23:59:59.999Z in ms since the epoch"


def is_replay(headers: Headers) -> bool:
    """Whether a record carries :data:`REPLAY_HEADER` (re-read by a warm restart: step, emit nothing)."""
    for h in headers:  # a loop, not any(genexpr): once per record on the hot path
        if h[0] == REPLAY_HEADER:
            return True
    return False


def frame_index_of(headers: Headers) -> int:
    """``costream.frame_index`` as an int in ``0..MAX_FRAME_INDEX``; raises ``CodecError`` s."""
    return decimal_header(headers, HEADER_FRAME_INDEX, MAX_FRAME_INDEX, _INDEX_WHY)


def ts_ms_of(headers: Headers) -> int:
    """``costream.ts_ms`` as an int in ``0..MAX_TS_MS``; raises ``CodecError`` s."""
    return decimal_header(headers, HEADER_TS_MS, MAX_TS_MS, _TS_WHY)
