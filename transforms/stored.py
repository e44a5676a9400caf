"""What one stream keeps in Beam state between frames, and the shard cell that holds many.

A stream's cell (:class:`Stored`) is one bytes value in one format: a fixed prefix, a binary
header with the model identity (``name@sha256[:12]``), the last frame index, the last-seen wall
time (TTL), the newest capture time and the layout of the model state (kind, window, each
tensor's name, dtype and shape: :meth:`StreamState.layout`); then the last features as raw
float32 (the ``fill`` gap policy holds them), the state's raw little-endian tensors, and one
CRC-32C (Castagnoli) over everything. No pickle::

    "CoSS" | version u16 = 5 | header length u32 | header | features | tensors | crc32c u32
    header = last index i64 | last seen ms i64 | last capture ms i64 (INT64_MIN: unknown)
             | features u32 | window u32 | tensors u8 | model (u8 length, UTF-8)
             | kind (u16 length, UTF-8) | per tensor: name (u8 length, UTF-8), dtype u8,
             ndim u8, ndim x u32

The header is binary (version 3 had JSON: ~290 bytes, 7 % of a small model's half-precision
state) and its fixed fields sit at fixed offsets, so :meth:`Stored.last_seen` (the eviction scan
over a shard's cells) is one ``struct`` read. Version 5 differs from 4 only in its checksum:
CRC-32C, which the ``crc32c`` package computes with the CPU's CRC instruction (25 GB/s here,
against zlib's CRC32 at 3.1 GB/s: 21 vs 169 us for a 524 kB paper-configuration cell, checked at
every read and computed at every write). Cells of versions 1 and 2 (a JSON of the stream's
metadata followed by the model state as a separate ``StreamState.to_bytes`` blob with its own
header and CRC), 3 (a JSON header) and 4 (zlib's CRC32) still load.

With cross-stream batching (:mod:`costream.transforms.batching`) one Beam key (a shard) holds
the cells of all its streams in one value, :class:`ShardCell`; each entry is a stream's
:class:`Stored` bytes, unchanged, so both paths store a stream the same way::

    "CoSh" | version u16 = 2 | count u32 | count x (id length u16, cell length u32, id)
           | crc32 u32 of all before it | the cells, in index order
"""

from __future__ import annotations

import functools
import json
import struct
import zlib
from dataclasses import dataclass

import crc32c
import numpy as np

from costream.models.state import StateFormatError, StreamState

__all__ = ["ShardCell", "Stored"]

_MAGIC = b"CoSS"
_VERSION = 5  # 5: CRC-32C; 4: a binary header; 3: a JSON one; 1, 2: a nested blob (all load)
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length
_LEGACY = struct.Struct("<4sHII")  # versions 1-2: magic, version, meta length, features length
_CRC = struct.Struct("<I")
_FIXED = struct.Struct("<qqqIIB")  # last index, last seen, last capture, features, window, tensors
_SEEN_AT = _PREFIX.size + 8  # offset of last_seen_ms in a version-4 or -5 cell
_BINARY = (4, _VERSION)  # versions with the binary header
_NO_TS = -(2**63)  # last_ts_ms unknown (a cell converted from version 1)
# dtype codes of the header: positions are the format (append only, never reorder)
_DTYPE_CODES = ("float32", "float16", "bfloat16", "float64", "int32", "int64", "bool")
_DTYPE_CODE = {name: i for i, name in enumerate(_DTYPE_CODES)}


@dataclass
class Stored:
    """What one stream keeps between frames (serialised to one bytes cell)."""

    model: str
    last_index: int
    last_seen_ms: int
    last_features: np.ndarray  # float32 (D_in,)
    state: StreamState | None  # the stream's one-row model state (None: not filled in yet)
    last_ts_ms: int | None = None  # capture time of the newest frame (None: a version-1 cell)

    def to_bytes(self) -> bytes:
        """The cell's bytes (format in the module docstring)."""
        if self.state is None:
            raise StateFormatError("A stored cell needs its model state.")
        layout, tensors = self.state.layout()
        feats = np.ascontiguousarray(self.last_features, dtype="<f4").tobytes()
        header = _header(self, layout, len(feats) // 4)
        parts = [_PREFIX.pack(_MAGIC, _VERSION, len(header)), header, feats, *tensors]
        return _joined(parts)

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview) -> Stored:
        """Inverse of :meth:`to_bytes` (and versions 1-3); :class:`StateFormatError` on damage.

        ``blob`` may be a view (a shard cell's entry): the state's tensors get one writable copy.
        """
        if len(blob) < _PREFIX.size:
            raise StateFormatError("Stored stream state is truncated.")
        magic, version = struct.unpack_from("<4sH", blob)
        if magic != _MAGIC or version not in (1, 2, 3, *_BINARY):
            raise StateFormatError(
                f"Stored stream state has magic {magic!r} version {version}; expected {_MAGIC!r} "
                f"{_VERSION}."
            )
        if version < 3:
            return cls._legacy(blob)
        if len(blob) < _PREFIX.size + _CRC.size:
            raise StateFormatError("Stored stream state is truncated.")
        end = len(blob) - _CRC.size
        body = memoryview(blob)[:end]
        crc = crc32c.crc32c(body) if version == _VERSION else zlib.crc32(body)
        if crc != _CRC.unpack_from(blob, end)[0]:
            name = "CRC-32C" if version == _VERSION else "CRC32"
            raise StateFormatError(
                f"Stored stream state is corrupted or truncated: {name} mismatch."
            )
        _, _, hlen = _PREFIX.unpack_from(blob)
        pos = _PREFIX.size + hlen
        if pos > end:
            raise StateFormatError("Stored stream state is truncated inside its header.")
        try:
            head = memoryview(blob)[_PREFIX.size : pos]
            meta = json.loads(bytes(head)) if version == 3 else _parse_header(head)
            flen = 4 * int(meta["features"])
            feats = np.frombuffer(blob[pos : pos + flen], dtype="<f4").astype(np.float32)
            tensors = bytearray(memoryview(blob)[pos + flen : end])  # one writable copy
            state = StreamState.from_layout(meta["state"], tensors)
            return cls(
                meta["model"],
                meta["last_index"],
                meta["last_seen_ms"],
                feats,
                state,
                meta.get("last_ts_ms"),
            )
        except (ValueError, KeyError, TypeError, IndexError, struct.error) as e:
            if isinstance(e, StateFormatError):
                raise
            raise StateFormatError(f"Stored stream state header is unreadable: {e}.") from e

    @classmethod
    def _legacy(cls, blob: bytes | memoryview) -> Stored:
        """A version 1 or 2 cell: metadata JSON, features, a nested ``StreamState`` blob."""
        if len(blob) < _LEGACY.size:
            raise StateFormatError("Stored stream state is truncated.")
        _, _, mlen, flen = _LEGACY.unpack_from(blob)
        pos = _LEGACY.size
        try:
            meta = json.loads(bytes(blob[pos : pos + mlen]))
        except ValueError as e:
            raise StateFormatError(f"Stored stream state metadata is unreadable: {e}.") from e
        pos += mlen
        feats = np.frombuffer(blob[pos : pos + flen], dtype="<f4").astype(np.float32)
        return cls(
            meta["model"],
            meta["last_index"],
            meta["last_seen_ms"],
            feats,
            StreamState.from_bytes(bytes(blob[pos + flen :])),
            meta.get("last_ts_ms"),
        )

    @staticmethod
    def last_seen(blob: bytes | memoryview) -> int:
        """The last-seen wall time (ms) of a cell, reading only its header."""
        _, version = struct.unpack_from("<4sH", blob)
        if version in _BINARY:
            return int(struct.unpack_from("<q", blob, _SEEN_AT)[0])
        if version < 3:
            _, _, mlen, _ = _LEGACY.unpack_from(blob)
            start = _LEGACY.size
        else:
            _, _, mlen = _PREFIX.unpack_from(blob)
            start = _PREFIX.size
        return int(json.loads(bytes(blob[start : start + mlen]))["last_seen_ms"])


def _text(s: str, width: str) -> bytes:
    raw = s.encode()
    if len(raw) >= 1 << (8 * struct.calcsize(width)):
        raise StateFormatError(f"{s[:40]!r}... is too long for a stored cell's header.")
    return struct.pack("<" + width, len(raw)) + raw


def _header(cell: Stored, layout: dict, features: int) -> bytes:
    """The binary header of a version-4 or -5 cell (format in the module docstring)."""
    entries = layout["tensors"]
    ts = _NO_TS if cell.last_ts_ms is None else cell.last_ts_ms
    fixed = _FIXED.pack(
        cell.last_index, cell.last_seen_ms, ts, features, layout["window"], len(entries)
    )
    shapes = tuple((name, dtype, tuple(shape)) for name, dtype, shape in entries)
    return fixed + _describe(cell.model, layout["kind"], shapes)


@functools.lru_cache(maxsize=64)
def _describe(model: str, kind: str, entries: tuple) -> bytes:
    """The header after its fixed fields: the same for every stream of a model (cached)."""
    parts = [_text(model, "B"), _text(kind, "H")]
    for name, dtype, shape in entries:
        parts += [
            _text(name, "B"),
            struct.pack(f"<BB{len(shape)}I", _DTYPE_CODE[dtype], len(shape), *shape),
        ]
    return b"".join(parts)


def _parse_header(head: memoryview) -> dict:
    """Inverse of :func:`_header`: the same fields as a version-3 JSON header."""
    index, seen, ts, features, window, count = _FIXED.unpack_from(head)
    model, kind, entries = _parse_description(bytes(head[_FIXED.size :]), count)
    return {
        "model": model,
        "last_index": index,
        "last_seen_ms": seen,
        "last_ts_ms": None if ts == _NO_TS else ts,
        "features": features,
        "state": {"kind": kind, "window": window, "tensors": entries},
    }


@functools.lru_cache(maxsize=64)
def _parse_description(tail: bytes, count: int) -> tuple[str, str, tuple]:
    """Inverse of :func:`_describe` (cached: every stream of a model has the same one)."""
    pos = 0

    def text(width: str) -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<" + width, tail, pos)
        pos += struct.calcsize(width)
        if pos + n > len(tail):
            raise StateFormatError("Stored stream state header is truncated.")
        pos += n
        return tail[pos - n : pos].decode()

    model, kind = text("B"), text("H")
    entries = []
    for _ in range(count):
        name = text("B")
        code, ndim = struct.unpack_from("<BB", tail, pos)
        shape = struct.unpack_from(f"<{ndim}I", tail, pos + 2)
        pos += 2 + 4 * ndim
        entries.append((name, _DTYPE_CODES[code], shape))
    if pos != len(tail):
        raise StateFormatError(f"Stored stream state header has {len(tail) - pos} extra bytes.")
    return model, kind, tuple(entries)


def _joined(parts: list) -> bytes:
    """``parts`` joined, with the CRC-32C of them all appended (one copy of the parts)."""
    crc = 0
    for part in parts:
        crc = crc32c.crc32c(part, value=crc)
    return b"".join([*parts, _CRC.pack(crc)])


_SHARD_MAGIC = b"CoSh"
_SHARD_VERSION = 2  # 2: the CRC covers the index, each cell has its own; 1 (one CRC) loads
_SHARD_PREFIX = struct.Struct("<4sHI")  # magic, version, count
_ENTRY = struct.Struct("<HI")  # id length, cell length


class ShardCell:
    """The cells of a shard's streams: stream id -> :class:`Stored` bytes (insertion order).

    Version 2 (written): a CRC32 over the prefix and the index only; each cell is checked by its
    own CRC when it is read (:meth:`Stored.from_bytes`), so a shard of large states (64 paper-size
    streams are 34 MB) is not checksummed twice on every read and write, and a damaged cell
    fails alone instead of resetting the shard. Version 1 (one CRC over everything) still loads.
    """

    @staticmethod
    def to_bytes(cells: dict[str, bytes | memoryview]) -> bytes:
        """One value for all of a shard's streams (entries kept as they are, no re-encoding)."""
        index: list[bytes] = [_SHARD_PREFIX.pack(_SHARD_MAGIC, _SHARD_VERSION, len(cells))]
        for sid, cell in cells.items():
            raw = sid.encode()
            index += [_ENTRY.pack(len(raw), len(cell)), raw]
        head = b"".join(index)
        return b"".join([head, _CRC.pack(zlib.crc32(head)), *cells.values()])

    @staticmethod
    def from_bytes(blob: bytes | None) -> dict[str, bytes | memoryview]:
        """Inverse of :meth:`to_bytes` (``None`` or empty: no streams).

        The cells are views into ``blob`` (a shard holds many streams' states: no copies).
        Raises :class:`StateFormatError` on damage to the shard's index (a cell's own damage
        shows when it is read).
        """
        if not blob:
            return {}
        view = memoryview(blob)
        if len(view) < _SHARD_PREFIX.size + _CRC.size:
            raise StateFormatError("Shard state is truncated.")
        magic, version, count = _SHARD_PREFIX.unpack_from(view)
        if magic != _SHARD_MAGIC or version not in (1, _SHARD_VERSION):
            raise StateFormatError(
                f"Shard state has magic {magic!r} version {version}; expected {_SHARD_MAGIC!r} "
                f"{_SHARD_VERSION}."
            )
        if version == 1:
            return _v1_cells(view, count)
        ids, lengths, _, pos = _index(view, count, len(view), inline=False)
        if pos + _CRC.size > len(view) or zlib.crc32(view[:pos]) != _CRC.unpack_from(view, pos)[0]:
            raise StateFormatError("Shard state's index is corrupted or truncated: CRC32 mismatch.")
        pos += _CRC.size
        if pos + sum(lengths) != len(view):
            raise StateFormatError(
                f"Shard state holds {len(view) - pos} bytes of cells; its index says {sum(lengths)}."
            )
        cells: dict[str, bytes | memoryview] = {}
        for raw, clen in zip(ids, lengths):
            cells[raw.decode()] = view[pos : pos + clen]  # UTF-8: the CRC passed, so it was written
            pos += clen
        return cells


def _index(
    view: memoryview, count: int, end: int, inline: bool
) -> tuple[list[bytes], list[int], list[int], int]:
    """A shard's index: stream ids (UTF-8), cell lengths, cell offsets, where the index ends.

    ``inline`` (version 1): each cell follows its id; version 2 has the cells after the index.
    """
    ids: list[bytes] = []
    lengths: list[int] = []
    starts: list[int] = []
    pos = _SHARD_PREFIX.size
    for _ in range(count):
        if pos + _ENTRY.size > end:
            raise StateFormatError("Shard state is truncated inside its index.")
        idlen, clen = _ENTRY.unpack_from(view, pos)
        pos += _ENTRY.size
        step = idlen + (clen if inline else 0)
        if pos + step > end:
            raise StateFormatError("Shard state is truncated inside its index or a cell.")
        ids.append(bytes(view[pos : pos + idlen]))
        lengths.append(clen)
        starts.append(pos + idlen)
        pos += step
    return ids, lengths, starts, pos


def _v1_cells(view: memoryview, count: int) -> dict[str, bytes | memoryview]:
    """A version-1 shard: (id length, cell length, id, cell) entries, one CRC over all."""
    end = len(view) - _CRC.size
    if zlib.crc32(view[:end]) != _CRC.unpack_from(view, end)[0]:
        raise StateFormatError("Shard state is corrupted or truncated: CRC32 mismatch.")
    ids, lengths, starts, pos = _index(view, count, end, inline=True)
    if pos != end:
        raise StateFormatError(f"Shard state has {end - pos} unexpected trailing bytes.")
    return {raw.decode(): view[s : s + n] for raw, n, s in zip(ids, lengths, starts)}
