"""Records kafka-python cannot parse: fetch their batch raw and read it leniently.

kafka-python decodes every header name as UTF-8 while it unpacks a batch, so one record with a
non-UTF-8 header name raises ``CorruptRecordError`` for its whole batch, again on every seek into
it (the batch is re-parsed from its first record). :func:`fetch_lenient` fetches the batch that
holds an offset straight from the partition leader and parses it here (message format v2, any
codec), keeping header names as bytes, so the reader can emit the good records, dead-letter the
bad ones with their original bytes, and move past the batch.

It uses kafka-python's connection of the reader's own consumer (``consumer._client``): a Fetch
request (v4..12, names not topic ids) sent on the consumer's event loop.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from kafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from kafka.record.util import decode_varint

__all__ = ["RawRecord", "fetch_lenient", "parse_batches"]

_HEADER = struct.Struct(">qiiBIhiqqqhii")  # record batch v2 header, 61 bytes
_CODECS = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}


class RawRecord(NamedTuple):
    """One record as stored; ``headers`` names are bytes; ``error`` says why it is unusable."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[bytes, bytes | None]]
    error: str | None


def _varbytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    n, pos = decode_varint(buf, pos)
    if n < 0:
        return None, pos
    return bytes(buf[pos : pos + n]), pos + n


def parse_batches(data: bytes, from_offset: int) -> tuple[list[RawRecord], int | None]:
    """The records at or after ``from_offset`` of the first batch that holds one.

    Returns them with the offset after that batch (``None`` when ``data`` holds no whole batch).
    """
    pos = 0
    while pos + _HEADER.size <= len(data):
        (base, length, _epoch, magic, _crc, attrs, last_delta, first_ts, max_ts, _pid, _pe,
         _seq, count) = _HEADER.unpack_from(data, pos)  # fmt: skip
        end = pos + 12 + length
        if end > len(data):
            return [], None  # a partial batch at the end of the fetch
        next_offset = base + last_delta + 1
        if magic != 2:
            raise ValueError(f"record batch at offset {base} has message format v{magic}.")
        if next_offset <= from_offset or attrs & 0x20:  # before the offset, or a control batch
            pos = end
            continue
        body = data[pos + _HEADER.size : end]
        codec = attrs & 0x07
        if codec:
            body = _CODECS[codec](body if codec == 1 else bytes(body))
        log_append = bool(attrs & 0x08)
        out, p = [], 0
        for _ in range(count):
            _len, p = decode_varint(body, p)
            p += 1  # attributes
            ts_delta, p = decode_varint(body, p)
            off_delta, p = decode_varint(body, p)
            key, p = _varbytes(body, p)
            value, p = _varbytes(body, p)
            n_headers, p = decode_varint(body, p)
            headers, errors = [], []
            for _ in range(max(n_headers, 0)):
                name, p = _varbytes(body, p)
                hval, p = _varbytes(body, p)
                name = name or b""
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError:
                    errors.append(f"header name {name[:40]!r} is not UTF-8")
                headers.append((name, hval))
            offset = base + off_delta
            if offset >= from_offset:
                ts = max_ts if log_append else first_ts + ts_delta
                out.append(RawRecord(offset, ts, key, value, headers, "; ".join(errors) or None))
        return out, next_offset
    return [], None


def fetch_lenient(
    consumer: Any, tp: Any, offset: int, max_bytes: int, timeout_ms: int
) -> tuple[list[RawRecord], int | None]:
    """Fetch the batch holding ``offset`` of ``tp`` with ``consumer``'s connection; parse it.

    ``max_wait_ms`` is not 0: tansu 0.6 answers a fetch that may not wait with no data at all.
    """
    from kafka.errors import for_code
    from kafka.protocol.consumer import FetchRequest

    topic_cls = FetchRequest.FetchTopic
    client = consumer._client  # kafka-python has no public raw fetch
    node = client.cluster.leader_for_partition(tp)
    if node is None or node < 0:
        raise ConnectionError(f"no leader known for {tp.topic}[{tp.partition}]")
    request = FetchRequest(
        max_wait_ms=100, min_bytes=1, max_bytes=max_bytes, isolation_level=0, session_id=0,
        session_epoch=-1, forgotten_topics_data=[], rack_id="", max_version=12,
        topics=[topic_cls(topic=tp.topic, partitions=[topic_cls.FetchPartition(
            partition=tp.partition, current_leader_epoch=-1, fetch_offset=offset,
            last_fetched_epoch=-1, partition_max_bytes=max_bytes)])],
    )  # fmt: skip

    async def send() -> Any:
        conn = await client._manager.get_connection(node, timeout_ms=timeout_ms)
        return await conn.send_request(request)

    response = client._net.run(send)
    part = response.responses[0].partitions[0]
    if part.error_code:
        raise for_code(part.error_code)(f"raw fetch of {tp.topic}[{tp.partition}] at {offset}")
    return parse_batches(bytes(part.records or b""), offset)
