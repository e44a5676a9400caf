"""Explicit per-stream continual state.

A ``StreamState`` is a small typed container: named tensors whose first dimension is the stream
(batch) axis, plus a per-row token counter ``t`` (tokens seen since the row's start or reset).
Row ``b`` of every tensor belongs to stream ``b``, so streams at different positions share one
batched step, and a state splits into rows and concatenates back (a stateful DoFn stores one
stream's row; a batching step gathers many).

Models update a state *in place* and return it (like an RNN hidden buffer: copying the key/value
rings every step would cost as much memory traffic as the step itself at large B). Use
``state.clone()`` before a step whose effect you want to discard.

Serialisation is compact and pickle-free: a fixed binary header, a JSON description of the
tensors, the raw little-endian tensor bytes, and a CRC32 over everything::

    MAGIC(4) | version u16 | header_len u32 | header JSON | payload | crc32 u32
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

__all__ = ["StateFormatError", "StreamState"]

MAGIC = b"CoSt"
VERSION = 1
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length
_CRC = struct.Struct("<I")

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_ITEMSIZE = {v: torch.empty(0, dtype=v).element_size() for v in _DTYPES.values()}


class StateFormatError(ValueError):
    """A state blob or a state's shape does not match what was expected."""


class StreamState:
    """Named per-stream tensors plus a per-row token counter.

    Args:
        tensors: name -> tensor, every tensor with first dimension ``B`` (the streams).
        t: ``(B,)`` int64 tokens seen by each row since its start or last reset.
        window: ``n``, the number of tokens a row needs before its output is exact (``warm``).
        kind: a short description of the model the state belongs to; states of one kind are
            interchangeable, and models refuse states of another kind.

    Example:
        >>> s = StreamState({"k": torch.zeros(2, 3)}, torch.tensor([0, 5]), window=4, kind="demo")
        >>> s.warm.tolist()
        [False, True]
        >>> StreamState.from_bytes(s.to_bytes()).t.tolist()
        [0, 5]
    """

    def __init__(self, tensors: dict[str, Tensor], t: Tensor, window: int, kind: str) -> None:
        if t.dim() != 1:
            raise StateFormatError(f"The counter t must have shape (B,), got {tuple(t.shape)}.")
        B = t.shape[0]
        for name, x in tensors.items():
            if x.dim() == 0 or x.shape[0] != B:
                raise StateFormatError(
                    f"State tensor {name!r} has shape {tuple(x.shape)}; its first dimension "
                    f"must be the {B} streams of the counter t."
                )
        self.tensors = dict(tensors)
        self.t = t.to(torch.int64)
        self.window = int(window)
        self.kind = kind

    # -- views ---------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Number of stream rows ``B``."""
        return int(self.t.shape[0])

    @property
    def warm(self) -> Tensor:
        """``(B,)`` bool: the row has seen at least ``window`` tokens since its start or reset."""
        return self.t >= self.window

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors and the counter."""
        return int(
            sum(x.numel() * x.element_size() for x in self.tensors.values()) + 8 * len(self.t)
        )

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.tensors.items())
        return (
            f"StreamState(kind={self.kind!r}, window={self.window}, t={self.t.tolist()}, {shapes})"
        )

    # -- row operations ------------------------------------------------------------------------
    def clone(self) -> StreamState:
        """Deep copy (the model's in-place step will not touch the copy)."""
        return StreamState(
            {k: v.clone() for k, v in self.tensors.items()}, self.t.clone(), self.window, self.kind
        )

    def select(self, rows: Sequence[int] | Tensor) -> StreamState:
        """A new state holding copies of the given rows, in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return StreamState(
            {k: v[idx].clone() for k, v in self.tensors.items()},
            self.t[idx].clone(),
            self.window,
            self.kind,
        )

    def to_float(self, dtype: torch.dtype) -> StreamState:
        """This state with its floating tensors in ``dtype`` (itself when they already are)."""
        if all(v.dtype is dtype or not v.is_floating_point() for v in self.tensors.values()):
            return self
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.tensors.items()}
        return StreamState(tensors, self.t, self.window, self.kind)

    def view(self, row: int) -> StreamState:
        """Row ``row`` as a one-row state sharing this state's memory (no copy)."""
        return StreamState(
            {k: v[row : row + 1] for k, v in self.tensors.items()},
            self.t[row : row + 1],
            self.window,
            self.kind,
        )

    def put(self, rows: Sequence[int] | Tensor, other: StreamState) -> StreamState:
        """Write ``other``'s rows into the given rows of this state, in place.

        The inverse of :meth:`select`.
        """
        idx = torch.as_tensor(rows, dtype=torch.long)
        if other.batch_size != len(idx) or other.tensors.keys() != self.tensors.keys():
            raise StateFormatError(
                f"Cannot put a {other.batch_size}-row state of tensors {sorted(other.tensors)} "
                f"into {len(idx)} rows of tensors {sorted(self.tensors)}."
            )
        for k, v in self.tensors.items():
            v[idx] = other.tensors[k]
        self.t[idx] = other.t
        return self

    def split(self) -> list[StreamState]:
        """One single-row state per stream."""
        return [self.select([b]) for b in range(self.batch_size)]

    @classmethod
    def cat(cls, states: Sequence[StreamState]) -> StreamState:
        """Concatenate states of the same kind along the stream axis."""
        if not states:
            raise StateFormatError("Cannot concatenate an empty list of states.")
        first = states[0]
        for s in states[1:]:
            if (
                s.kind != first.kind
                or s.window != first.window
                or s.tensors.keys() != first.tensors.keys()
            ):
                raise StateFormatError(
                    f"Cannot concatenate states of different models: {first.kind!r} (window "
                    f"{first.window}) and {s.kind!r} (window {s.window})."
                )
        tensors = {k: torch.cat([s.tensors[k] for s in states]) for k in first.tensors}
        return cls(tensors, torch.cat([s.t for s in states]), first.window, first.kind)

    def reset(self, rows: Sequence[int] | Tensor) -> StreamState:
        """Reset the given rows (indices or a (B,) bool mask) to the initial state, in place.

        Every model's initial state is all zeros with ``t = 0``; the next ``window - 1`` steps of a
        reset row are warm-up again, and nothing of its past leaks into later outputs.
        """
        idx = torch.as_tensor(rows)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        for v in self.tensors.values():
            v[idx] = 0
        self.t[idx] = 0
        return self

    # -- bytes ---------------------------------------------------------------------------------
    def layout(self) -> tuple[dict, list[memoryview]]:
        """The state as a JSON-able description and the raw bytes of its tensors.

        The description holds ``kind``, ``window`` and ``tensors`` (name, dtype, shape each);
        the bytes are little-endian, ``t`` first. :meth:`to_bytes` frames them with a header and a CRC; a container (a stream's stored
        cell) may embed the same parts in its own framing (:meth:`from_layout`).
        """
        entries = [["t", "int64", list(self.t.shape)]]
        payload = [_raw(self.t)]
        for name, x in self.tensors.items():
            if x.dtype not in _DTYPE_NAMES:
                raise StateFormatError(f"State tensor {name!r} has unsupported dtype {x.dtype}.")
            entries.append([name, _DTYPE_NAMES[x.dtype], list(x.shape)])
            payload.append(_raw(x))
        return {"kind": self.kind, "window": self.window, "tensors": entries}, payload

    @classmethod
    def from_layout(cls, header: dict, payload: bytearray | memoryview) -> StreamState:
        """Inverse of :meth:`layout`: the tensors are views into ``payload`` (writable, no copy).

        Raises :class:`StateFormatError` when the description and the bytes do not match.
        """
        try:
            entries = header["tensors"]
            window, kind = header["window"], header["kind"]
        except (KeyError, TypeError) as e:
            raise StateFormatError(f"State description is unreadable: {e}.") from e
        pos, end = 0, len(payload)
        tensors: dict[str, Tensor] = {}
        for name, dtype_name, shape in entries:
            if dtype_name not in _DTYPES:
                raise StateFormatError(f"State tensor {name!r} has unknown dtype {dtype_name!r}.")
            dtype = _DTYPES[dtype_name]
            size = math.prod(shape) * _ITEMSIZE[dtype]
            if pos + size > end:
                raise StateFormatError(f"State blob is truncated inside tensor {name!r}.")
            tensors[name] = _view(payload, dtype, size // _ITEMSIZE[dtype], pos, shape)
            pos += size
        if pos != end:
            raise StateFormatError(f"State blob has {end - pos} unexpected trailing bytes.")
        if "t" not in tensors:
            raise StateFormatError("State description has no counter t.")
        t = tensors.pop("t")
        return cls(tensors, t, window, kind)

    def to_bytes(self) -> bytes:
        """Serialise to compact bytes: dtypes kept, versioned header, CRC32, no pickle."""
        layout, payload = self.layout()
        header = json.dumps(layout, separators=(",", ":")).encode()
        parts: list[bytes | memoryview] = [_PREFIX.pack(MAGIC, VERSION, len(header)), header]
        parts += payload
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        return b"".join([*parts, _CRC.pack(crc)])

    @classmethod
    def from_bytes(cls, blob: bytes) -> StreamState:
        """Inverse of :meth:`to_bytes`; raises :class:`StateFormatError` on any damage."""
        blob = bytes(blob)
        if len(blob) < _PREFIX.size + _CRC.size:
            raise StateFormatError(
                f"State blob is truncated: {len(blob)} bytes is shorter than a header."
            )
        magic, version, hlen = _PREFIX.unpack_from(blob)
        if magic != MAGIC:
            raise StateFormatError(
                f"Not a costream state blob: magic {magic!r}, expected {MAGIC!r}."
            )
        if version != VERSION:
            raise StateFormatError(
                f"State blob version {version} is not supported (expected {VERSION})."
            )
        (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
        if zlib.crc32(blob[: -_CRC.size]) != crc:
            raise StateFormatError(
                "State blob is corrupted or truncated: its CRC32 does not match."
            )
        try:
            header = json.loads(blob[_PREFIX.size : _PREFIX.size + hlen])
        except ValueError as e:
            raise StateFormatError(f"State blob header is unreadable: {e}.") from e
        pos, end = _PREFIX.size + hlen, len(blob) - _CRC.size
        return cls.from_layout(header, bytearray(blob[pos:end]))  # one writable copy


def _raw(x: Tensor) -> memoryview:
    """Little-endian raw bytes of a tensor (bfloat16 viewed as int16 since numpy lacks it).

    A view of the tensor's memory where it already is contiguous little-endian CPU data (no
    copy: a state's tensors are large and are joined into one value right away), else of a copy.
    """
    if x.requires_grad:
        x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if not x.is_contiguous():
        x = x.contiguous()
    if x.dtype is torch.bfloat16:
        x = x.view(torch.int16)
    a = x.numpy()
    if not _LITTLE:
        a = a.astype(a.dtype.newbyteorder("<"))
    return memoryview(cast(Any, a)).cast("B")  # numpy's stubs lack the buffer protocol


_LITTLE = sys.byteorder == "little"
# numpy's dtype for each state dtype's little-endian bytes (bfloat16: its bits as int16)
_NUMPY: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype("<f2"),
    torch.bfloat16: np.dtype("<i2"),
    torch.float32: np.dtype("<f4"),
    torch.float64: np.dtype("<f8"),
    torch.int32: np.dtype("<i4"),
    torch.int64: np.dtype("<i8"),
    torch.bool: np.dtype("?"),
}


def _view(
    buf: bytearray | memoryview, dtype: torch.dtype, count: int, offset: int, shape: Sequence[int]
) -> Tensor:
    """``count`` values of ``dtype`` at byte ``offset`` of ``buf`` as a tensor of ``shape``.

    A view, no copy; numpy's frombuffer and reshape cost a third of torch's on small tensors.
    """
    if not count:
        return torch.zeros(tuple(shape), dtype=dtype)
    a = np.frombuffer(buf, dtype=_NUMPY[dtype], count=count, offset=offset).reshape(shape)
    if not _LITTLE:
        a = a.astype(a.dtype.newbyteorder("="))
    x = torch.from_numpy(a)
    return x.view(torch.bfloat16) if dtype is torch.bfloat16 else x
