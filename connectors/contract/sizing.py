"""Record sizing of the stream contract: how large a record is, and how it is cut to fit.

Kafka refuses a record above the producer's ``max_request_size`` (and the broker's
``message.max.bytes``). :func:`record_size` is what kafka-python counts for one record;
:func:`fit_record` cuts a record's value to fit and marks it (:func:`truncated_record`:
``costream.truncated``, ``costream.original_size``, ``costream.original_sha256``), and
:func:`fit_dead_letter` goes further for dead letters, which must get out whatever their size
(the original headers, then the key, are cut too, and headers say so). Sizing and truncation
marks live here together; the Kafka writers only call them. See ``docs/stream-contract.md``.

Example (what happens to a dead letter of a 1 MiB input):
    >>> from costream.connectors.contract.dead_letters import dead_letter_record
    >>> big = dead_letter_record(b"mic", b"x" * (1 << 20), [], "too large", "decode")
    >>> cut = fit_record(big, DEFAULT_MAX_REQUEST_SIZE)
    >>> len(cut.value), [(k, v) for k, v in cut.headers if k == "costream.original_size"]
    (1048293, [('costream.original_size', b'1048576')])
"""

import hashlib
from collections.abc import Sequence
from typing import cast

from costream.connectors.contract.frames import OutgoingRecord
from costream.connectors.contract.headers import (
    HEADER_DROPPED_HEADERS,
    HEADER_ERROR,
    HEADER_ORIGINAL_KEY_SHA256,
    HEADER_ORIGINAL_KEY_SIZE,
    HEADER_ORIGINAL_SHA256,
    HEADER_ORIGINAL_SIZE,
    HEADER_SOURCE,
    HEADER_STAGE,
    HEADER_TRUNCATED,
    Header,
    as_headers,
    header_value,
)

__all__ = [
    "DEFAULT_MAX_REQUEST_SIZE",
    "RecordTooLargeError",
    "fit_dead_letter",
    "fit_record",
    "fits",
    "record_size",
    "truncated_record",
]

DEFAULT_MAX_REQUEST_SIZE = 1 << 20
"""kafka-python's default largest request, and about Kafka's default ``message.max.bytes``."""


class RecordTooLargeError(ValueError):
    """A record is larger than the writer's ``max_request_size`` and may not be truncated."""


def _outgoing(
    key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
) -> OutgoingRecord:
    """An :class:`OutgoingRecord` of ``headers`` as they are: :class:`Header` rows and plain pairs.

    ``OutgoingRecord.headers`` is typed ``Sequence[Header]`` (the Beam schema's row type), but it
    takes plain ``(name, value)`` pairs too (its docstring; they compare equal to ``Header``).
    """
    return OutgoingRecord(key, value, cast("Sequence[Header]", headers))


def truncated_record(record: OutgoingRecord, keep: int) -> OutgoingRecord:
    """``record`` with its value cut to its first ``keep`` bytes, marked as truncated.

    Adds ``costream.truncated`` = ``true``, ``costream.original_size`` (the whole value's length,
    decimal ASCII) and ``costream.original_sha256`` (its SHA-256, lower-case hex), so a reader
    can tell a cut value from a whole one and match it to the original. A record already marked
    keeps its marks (they describe the first original) and is only cut further. The added
    headers do not depend on ``keep``, so a writer can size them before choosing ``keep``.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a number of bytes >= 0, got {keep!r}.")
    # plain pairs are added to the Header rows below (OutgoingRecord takes both: _outgoing)
    headers = cast("list[tuple[str, bytes]]", as_headers(record.headers))
    if header_value(headers, HEADER_TRUNCATED) != b"true":
        drop = (HEADER_TRUNCATED, HEADER_ORIGINAL_SIZE, HEADER_ORIGINAL_SHA256)
        headers = [(k, v) for k, v in headers if k not in drop]
        headers += [
            Header(HEADER_TRUNCATED, b"true"),
            Header(HEADER_ORIGINAL_SIZE, str(len(record.value)).encode("ascii")),
            Header(
                HEADER_ORIGINAL_SHA256, hashlib.sha256(record.value).hexdigest().encode("ascii")
            ),
        ]
    return _outgoing(record.key, bytes(record.value[:keep]), headers)


def record_size(record: OutgoingRecord) -> int:
    """Bytes kafka-python counts against ``max_request_size`` for ``record`` alone.

    The upper bound of a one-record batch (v2 format, uncompressed): what the producer checks
    before sending, and at least the size a broker checks against ``message.max.bytes``.
    """
    from kafka.record.default_records import DefaultRecordBatchBuilder

    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, record.headers
    )


# record_size's terms at their largest: the batch header (61 bytes) and a record's overhead (21),
# a 5-byte varint before the key, the value and the header count, and two per header
_MOST_OVERHEAD = 61 + 21 + 3 * 5
_MOST_PER_HEADER = 2 * 5


def fits(record: OutgoingRecord, limit: int) -> bool:
    """Whether ``record_size(record) <= limit``, sizing exactly only near the limit.

    A bound above :func:`record_size` (header names counted at 4 UTF-8 bytes a character)
    settles records well below ``limit`` without kafka-python's per-field varint sizing
    (about 16 us a record on a 2-core VM, every record written).
    """
    bound = _MOST_OVERHEAD + len(record.value) + len(record.key or b"")
    for name, value in record.headers:
        bound += _MOST_PER_HEADER + 4 * len(name) + len(value or b"")
    return bound <= limit or record_size(record) <= limit


def fit_record(record: OutgoingRecord, max_request_size: int) -> OutgoingRecord:
    """``record`` itself when it fits in ``max_request_size``, else its value cut to fit.

    A cut record is :func:`~costream.connectors.truncated_record`: a prefix of the value
    (a few bytes short of the longest that fits, at most) plus ``costream.truncated``,
    ``costream.original_size`` and ``costream.original_sha256``.

    Raises:
        RecordTooLargeError: the key and headers alone, with an empty value, do not fit.
    """
    if record_size(record) <= max_request_size:
        return record
    keep = max_request_size - record_size(truncated_record(record, 0))
    if keep < 0:
        raise RecordTooLargeError(
            f"A record of {record_size(record)} bytes cannot be cut to fit max_request_size="
            f"{max_request_size}: its key and headers alone take {max_request_size - keep} bytes."
        )
    while True:  # the value's length varints shrink with it: at most a few bytes, two rounds
        cut = truncated_record(record, keep)
        over = record_size(cut) - max_request_size
        if over <= 0:
            return cut
        keep = max(0, keep - over)


def fit_dead_letter(record: OutgoingRecord, max_request_size: int) -> OutgoingRecord:
    """A dead letter cut to fit ``max_request_size``, saying what was cut.

    First the value (:func:`fit_record`); when the key and headers alone are too large, the
    original headers are dropped (``costream.dropped_headers`` says how many and how many
    bytes; ``costream.error`` is kept, cut to 1,000 bytes, with ``costream.stage`` and
    ``costream.source``); when the key alone is still too large, it is cut too
    (``costream.original_key_size`` and ``costream.original_key_sha256``).

    Raises:
        RecordTooLargeError: not even an empty dead letter fits (a tiny ``max_request_size``).
    """
    try:
        return fit_record(record, max_request_size)
    except RecordTooLargeError:
        pass
    keep = (HEADER_ERROR, HEADER_STAGE, HEADER_SOURCE)
    dropped = [(k, v) for k, v in record.headers if k not in keep]
    size = sum(len(k.encode()) + len(v) for k, v in dropped)
    headers = [(k, v[:1000] if k == HEADER_ERROR else v) for k, v in record.headers if k in keep]
    headers.append((HEADER_DROPPED_HEADERS, f"{len(dropped)} headers, {size} bytes".encode()))
    try:
        return fit_record(_outgoing(record.key, record.value, headers), max_request_size)
    except RecordTooLargeError:
        pass
    key = record.key or b""
    headers += [
        (HEADER_ORIGINAL_KEY_SIZE, str(len(key)).encode()),
        (HEADER_ORIGINAL_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
    ]
    empty = truncated_record(_outgoing(b"", record.value, headers), 0)
    room = max_request_size - record_size(empty) - 8  # the key's length varint grows with it
    if room < 0:
        raise RecordTooLargeError(
            f"Not even an empty dead letter fits max_request_size={max_request_size}."
        )
    return fit_record(_outgoing(key[:room], record.value, headers), max_request_size)
