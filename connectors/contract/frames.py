"""The frame record of the stream contract: what a producer writes, and its validation.

An input record has key = stream id (UTF-8), the headers ``costream.frame_index``,
``costream.ts_ms`` and ``content-type`` (:mod:`~costream.connectors.contract.headers`,
:mod:`~costream.connectors.contract.content_types`), and value = the encoded payload.
:func:`frame_record` builds one; :func:`decode_frame` validates one into a :class:`Frame`
(the payload still encoded: :func:`~costream.connectors.contract.payloads.decode_payload`
decodes it). :class:`OutgoingRecord` is any record a writer publishes. See
``docs/stream-contract.md``.

Example:
    >>> rec = frame_record("cam-1", 0, 1_700_000_000_000, "image/png", b"...")
    >>> frame = decode_frame(rec.key, rec.value, rec.headers)
    >>> frame.stream_id, frame.frame_index, frame.content_type.media_type
    ('cam-1', 0, 'image/png')
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from costream.connectors.contract.content_types import ContentType, parse_checked_content_type
from costream.connectors.contract.errors import (
    InvalidKeyError,
    MalformedHeaderError,
    PayloadSizeError,
)
from costream.connectors.contract.headers import (
    HEADER_CONTENT_TYPE,
    HEADER_FRAME_INDEX,
    HEADER_TS_MS,
    MAX_FRAME_INDEX,
    MAX_TS_MS,
    Header,
    Headers,
    frame_index_of,
    required_header,
    ts_ms_of,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "Frame",
    "OutgoingRecord",
    "decode_frame",
    "frame_record",
]

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


class OutgoingRecord(NamedTuple):
    """A record to publish: key, value and headers (topic and partition chosen by the writer).

    ``headers`` may hold plain ``(name, value)`` pairs or :class:`Header` rows.
    """

    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]


@dataclass(frozen=True)
class Frame:
    """One validated input record; ``payload`` is still encoded (see :func:`~costream.connectors.contract.payloads.decode_payload`)."""

    stream_id: str
    frame_index: int
    ts_ms: int
    content_type: ContentType
    payload: bytes


def decode_frame(
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Frame:
    """Validate one input record's key, headers and payload size; return a :class:`Frame`.

    The payload itself is not decoded (that is
    :func:`~costream.connectors.contract.payloads.decode_payload`); its declared content type
    must be one of the four the contract defines, with valid parameters. ``costream.frame_index``
    must lie in ``0..MAX_FRAME_INDEX`` (2**63 - 1) and ``costream.ts_ms`` in ``0..MAX_TS_MS``
    (the end of year 9999): see those constants for why.

    Raises:
        CodecError: a subclass naming the first problem found.
    """
    if key is None or len(key) == 0:
        raise InvalidKeyError("The record has no key; the key must be the stream id in UTF-8.")
    try:
        stream_id = bytes(key).decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidKeyError(
            f"The record key {bytes(key)[:40]!r} is not valid UTF-8 ({err.reason} at byte {err.start})."
        ) from None
    if value is None:
        raise PayloadSizeError("The record has no value (a tombstone); a payload is required.")
    if len(value) > max_payload_bytes:
        raise PayloadSizeError(
            f"The payload is {len(value)} bytes, above the limit of {max_payload_bytes} bytes."
        )
    frame_index = frame_index_of(headers)
    ts_ms = ts_ms_of(headers)
    raw_ct = required_header(headers, HEADER_CONTENT_TYPE)
    try:
        ct_text = raw_ct.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedHeaderError(
            f"Header {HEADER_CONTENT_TYPE!r} is not ASCII ({raw_ct[:40]!r})."
        ) from None
    content_type, _ = parse_checked_content_type(ct_text)
    return Frame(stream_id, frame_index, ts_ms, content_type, bytes(value))


def frame_record(
    stream_id: str, frame_index: int, ts_ms: int, content_type: str, payload: bytes
) -> OutgoingRecord:
    """Build an input-topic record with the contract's key and headers.

    ``frame_index`` must lie in ``0..MAX_FRAME_INDEX`` and ``ts_ms`` in ``0..MAX_TS_MS``, the
    ranges :func:`decode_frame` accepts, so a record built here is never refused for them.
    """
    if not stream_id:
        raise ValueError("stream_id must be a non-empty string.")
    for name, v, largest in (
        ("frame_index", frame_index, MAX_FRAME_INDEX),
        ("ts_ms", ts_ms, MAX_TS_MS),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= largest:
            raise ValueError(f"{name} must be a whole number in 0..{largest}, got {v!r}.")
    return OutgoingRecord(
        stream_id.encode("utf-8"),
        payload,
        [
            Header(HEADER_FRAME_INDEX, str(int(frame_index)).encode("ascii")),
            Header(HEADER_TS_MS, str(int(ts_ms)).encode("ascii")),
            Header(HEADER_CONTENT_TYPE, content_type.encode("ascii")),
        ],
    )
