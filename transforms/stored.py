"""What one stream keeps in Beam state between frames, and the shard cell that holds many.

A stream's cell (:class:`Stored`) is one bytes value: a fixed header, a small JSON with the
model identity (``name@sha256[:12]``), the last frame index, the last-seen wall time (TTL) and
the newest capture time; the last features as raw float32 (the ``fill`` gap policy holds them);
and the model's state for the stream's row (``StreamState.to_bytes``: raw tensors with their own
CRC32, no pickle)::

    "CoSS" | version u16 | meta length u32 | features length u32 | meta | features | state

With cross-stream batching (:mod:`costream.transforms.batching`) one Beam key (a shard) holds
the cells of all its streams in one value, :class:`ShardCell`; each entry is a stream's
:class:`Stored` bytes, unchanged, so both paths store a stream the same way::

    "CoSh" | version u16 | count u32 | count x (id length u16, cell length u32, id, cell) | crc32
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from costream.models.state import StateFormatError

__all__ = ["ShardCell", "Stored"]

_MAGIC = b"CoSS"
_VERSION = 2  # 2 added last_ts_ms; version 1 cells still load (last_ts_ms unknown)
_PREFIX = struct.Struct("<4sHII")  # magic, version, meta length, features length


@dataclass
class Stored:
    """What one stream keeps between frames (serialised to one bytes cell)."""

    model: str
    last_index: int
    last_seen_ms: int
    last_features: np.ndarray  # float32 (D_in,)
    state: bytes  # StreamState.to_bytes() of the stream's row
    last_ts_ms: int | None = None  # capture time of the newest frame (None: a version-1 cell)

    def to_bytes(self) -> bytes:
        """Compact bytes: header, JSON meta, raw float32 features, the model state blob."""
        meta = json.dumps(
            {
                "model": self.model,
                "last_index": self.last_index,
                "last_seen_ms": self.last_seen_ms,
                "last_ts_ms": self.last_ts_ms,
            },
            separators=(",", ":"),
        ).encode()
        feats = np.ascontiguousarray(self.last_features, dtype="<f4").tobytes()
        return b"".join(
            [_PREFIX.pack(_MAGIC, _VERSION, len(meta), len(feats)), meta, feats, self.state]
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Stored:
        """Inverse of :meth:`to_bytes`; raises :class:`StateFormatError` on damaged bytes."""
        if len(blob) < _PREFIX.size:
            raise StateFormatError("Stored stream state is truncated.")
        magic, version, mlen, flen = _PREFIX.unpack_from(blob)
        if magic != _MAGIC or version not in (1, _VERSION):
            raise StateFormatError(
                f"Stored stream state has magic {magic!r} version {version}; expected {_MAGIC!r} {_VERSION}."
            )
        pos = _PREFIX.size
        try:
            meta = json.loads(blob[pos : pos + mlen])
        except ValueError as e:
            raise StateFormatError(f"Stored stream state metadata is unreadable: {e}.") from e
        pos += mlen
        feats = np.frombuffer(blob[pos : pos + flen], dtype="<f4").astype(np.float32)
        return cls(
            meta["model"],
            meta["last_index"],
            meta["last_seen_ms"],
            feats,
            bytes(blob[pos + flen :]),
            meta.get("last_ts_ms"),
        )

    @staticmethod
    def last_seen(blob: bytes) -> int:
        """The last-seen wall time (ms) of a cell, reading only its metadata."""
        _, _, mlen, _ = _PREFIX.unpack_from(blob)
        return int(json.loads(blob[_PREFIX.size : _PREFIX.size + mlen])["last_seen_ms"])


_SHARD_MAGIC = b"CoSh"
_SHARD_VERSION = 1
_SHARD_PREFIX = struct.Struct("<4sHI")  # magic, version, count
_ENTRY = struct.Struct("<HI")  # id length, cell length
_CRC = struct.Struct("<I")


class ShardCell:
    """The cells of a shard's streams: stream id -> :class:`Stored` bytes (insertion order)."""

    @staticmethod
    def to_bytes(cells: dict[str, bytes]) -> bytes:
        """One value for all of a shard's streams (entries kept as they are, no re-encoding)."""
        parts = [_SHARD_PREFIX.pack(_SHARD_MAGIC, _SHARD_VERSION, len(cells))]
        for sid, cell in cells.items():
            raw = sid.encode()
            parts += [_ENTRY.pack(len(raw), len(cell)), raw, cell]
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))

    @staticmethod
    def from_bytes(blob: bytes | None) -> dict[str, bytes]:
        """Inverse of :meth:`to_bytes` (``None`` or empty: no streams).

        Raises :class:`StateFormatError` on damage.
        """
        if not blob:
            return {}
        view = memoryview(blob)
        if len(view) < _SHARD_PREFIX.size + _CRC.size:
            raise StateFormatError("Shard state is truncated.")
        magic, version, count = _SHARD_PREFIX.unpack_from(view)
        if magic != _SHARD_MAGIC or version != _SHARD_VERSION:
            raise StateFormatError(
                f"Shard state has magic {magic!r} version {version}; expected {_SHARD_MAGIC!r} "
                f"{_SHARD_VERSION}."
            )
        end = len(view) - _CRC.size
        if zlib.crc32(view[:end]) != _CRC.unpack_from(view, end)[0]:
            raise StateFormatError("Shard state is corrupted or truncated: CRC32 mismatch.")
        cells: dict[str, bytes] = {}
        pos = _SHARD_PREFIX.size
        for _ in range(count):
            if pos + _ENTRY.size > end:
                raise StateFormatError("Shard state is truncated inside its index.")
            idlen, clen = _ENTRY.unpack_from(view, pos)
            pos += _ENTRY.size
            if pos + idlen + clen > end:
                raise StateFormatError("Shard state is truncated inside a stream's cell.")
            sid = bytes(view[pos : pos + idlen]).decode()
            cells[sid] = bytes(view[pos + idlen : pos + idlen + clen])
            pos += idlen + clen
        if pos != end:
            raise StateFormatError(f"Shard state has {end - pos} unexpected trailing bytes.")
        return cells
