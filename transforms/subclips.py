"""Sub-clips: each stream's 0.25 s audio chunks -> the last 1 s of its audio, one per chunk.

The papers' audio setting (docs/audio-setting.md) makes one token per 0.25 s hop from the last
1 s of audio (a VGGish embedding of a 1 s sub-clip). A record of the stream contract holds one
chunk of ``hop`` samples (4000 at 16 kHz), so the backbone needs each stream's previous
``subclip - hop`` samples (12000) as well. Two layers, so the state update is tested without Beam:

* :class:`SubclipAssembler` is the plain update ``(stored bytes, chunk) -> (stored bytes,
  sub-clip)``, unit-tested without Beam. What a stream stores is :class:`History`: the last
  frame index and capture time, and the last ``subclip - hop`` samples as raw little-endian
  float32 (no pickle).
* :class:`AssembleSubclips` keys frames by stream id and runs :class:`AssembleSubclipsFn`, a
  stateful DoFn that reads the stream's bytes, calls the assembler, writes the bytes, emits.

What chunk ``i`` (capture time ``ts``) does to a stream whose newest chunk was ``last`` at
``last_ts``:

* ``i == last + 1``: the sub-clip is the stored samples followed by the chunk; the newest
  ``subclip - hop`` samples are stored.
* ``i <= last`` and ``ts <= last_ts``: a repeat (a redelivery); the history is kept as it is and
  the sub-clip is the stored samples followed by the chunk. ContinualInference drops the
  repeat's detection.
* anything else (no history yet; a gap, from a chunk lost or dead-lettered upstream; a new stream
  epoch, the source counting again with newer capture times, see
  ``costream.transforms.inference``): the history resets to silence, so the sub-clip is zeros
  followed by the chunk. The first chunks of a stream are therefore padded with silence and still
  yield one sub-clip each (their detections are warm-up anyway).

Replayed records (``costream.replay``, a warm restart) go through the same update and are
emitted as usual; ContinualInference steps them and drops their outputs, so both stages' states
are rebuilt.

Every input frame yields one sub-clip on ``main`` or, when the chunk does not fit (another rate
or length: the stream's state is untouched), one dead letter (stage ``features``).

Example:
    >>> a = SubclipAssembler(hop=2, subclip=6)
    >>> blob, clip, event = a.process(None, 0, 0, np.array([1.0, 2.0], np.float32))
    >>> clip.tolist(), event
    ([0.0, 0.0, 0.0, 0.0, 1.0, 2.0], 'reset')
    >>> blob, clip, event = a.process(blob, 1, 250, np.array([3.0, 4.0], np.float32))
    >>> clip.tolist(), event
    ([0.0, 0.0, 1.0, 2.0, 3.0, 4.0], 'next')
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import BytesCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from costream.connectors import contract
from costream.models.state import StateFormatError
from costream.transforms.counters import Counter
from costream.transforms.records import (
    DEAD_LETTER,
    MAIN,
    DecodedFrame,
    TaggedOutputs,
    as_array,
    ndarray_row,
    to_dead_letter,
    typed_outputs,
)

__all__ = ["AssembleSubclips", "AssembleSubclipsFn", "History", "SubclipAssembler"]

_METRICS_NS = "costream.features"
_MAGIC = b"CoSC"
_VERSION = 1
_PREFIX = struct.Struct("<4sHqqI")  # magic, version, last index, last ts_ms, samples held


@dataclass
class History:
    """One stream's audio history: its newest chunk's index and capture time, and the samples."""

    last_index: int
    last_ts_ms: int
    samples: np.ndarray  # float32 (subclip - hop,): the newest samples, oldest first

    def to_bytes(self) -> bytes:
        """Header then the samples as raw little-endian float32 (4 bytes a sample)."""
        pcm = np.ascontiguousarray(self.samples, dtype="<f4")
        head = _PREFIX.pack(_MAGIC, _VERSION, self.last_index, self.last_ts_ms, pcm.shape[0])
        return head + pcm.tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> History:
        """Inverse of :meth:`to_bytes`; raises :class:`StateFormatError` on damaged bytes."""
        if len(blob) < _PREFIX.size:
            raise StateFormatError("Stored sub-clip history is truncated.")
        magic, version, last_index, last_ts_ms, n = _PREFIX.unpack_from(blob)
        if magic != _MAGIC or version != _VERSION:
            raise StateFormatError(
                f"Stored sub-clip history has magic {magic!r} version {version}; expected "
                f"{_MAGIC!r} {_VERSION}."
            )
        if len(blob) != _PREFIX.size + 4 * n:
            raise StateFormatError(
                f"Stored sub-clip history holds {len(blob) - _PREFIX.size} sample bytes; its "
                f"header says {n} samples ({4 * n} bytes)."
            )
        samples = np.frombuffer(blob, dtype="<f4", offset=_PREFIX.size).astype(np.float32)
        return cls(last_index, last_ts_ms, samples)


class SubclipAssembler:
    """Per-chunk update of one stream's audio history (plain logic, no Beam).

    Args:
        hop: samples per chunk (one token): 4000 = 0.25 s at 16 kHz in the papers' setting.
        subclip: samples per sub-clip: 16000 = 1 s. The history holds ``subclip - hop``.
    """

    def __init__(self, hop: int, subclip: int) -> None:
        if not 1 <= hop <= subclip:
            raise ValueError(f"Need 1 <= hop <= subclip samples, got hop={hop}, subclip={subclip}.")
        self.hop, self.subclip = int(hop), int(subclip)
        self.held = self.subclip - self.hop

    def process(
        self, stored: bytes | None, frame_index: int, ts_ms: int, chunk: np.ndarray
    ) -> tuple[bytes | None, np.ndarray, str]:
        """Apply one chunk of ``hop`` samples.

        Returns the bytes to store (None: keep what is stored), the sub-clip (float32
        (subclip,), the chunk last) and what happened: ``next``, ``reset`` (no history, a gap or
        a new epoch; also unreadable stored bytes) or ``duplicate``.

        Raises:
            ValueError: the chunk does not hold ``hop`` samples (nothing to store changes).
        """
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if x.shape[0] != self.hop:
            raise ValueError(f"A chunk must hold {self.hop} samples; this one holds {x.shape[0]}.")
        try:
            prev = History.from_bytes(stored) if stored else None
        except StateFormatError:
            prev = None  # start again from silence rather than stop the stream
        if prev is not None and prev.samples.shape[0] != self.held:
            prev = None  # another sub-clip configuration wrote it
        if prev is not None and frame_index <= prev.last_index and ts_ms <= prev.last_ts_ms:
            return None, np.concatenate([prev.samples, x]), "duplicate"
        if prev is not None and frame_index == prev.last_index + 1:
            history, event = prev.samples, "next"
            last_ts = max(ts_ms, prev.last_ts_ms)
        else:
            history, event = np.zeros(self.held, np.float32), "reset"
            last_ts = ts_ms
        clip = np.concatenate([history, x])  # (subclip,)
        blob = History(frame_index, last_ts, clip[self.hop :]).to_bytes()
        return blob, clip, event


# -- Beam ------------------------------------------------------------------------------------------
class AssembleSubclipsFn(beam.DoFn):
    """Stateful DoFn keyed by stream id: one chunk in, one sub-clip (or dead letter) out.

    Input: ``(stream_id, DecodedFrame)`` audio chunks. Main output: the same
    :class:`~costream.transforms.records.DecodedFrame` (original record, indices, timestamps)
    with ``data`` the float32 sub-clip (``subclip`` samples). Tagged ``dead_letter``: chunks
    ``check`` refuses (stage ``features``), the stream's history untouched.

    Args:
        hop, subclip: see :class:`SubclipAssembler`.
        check: ``frame -> reason or None``, the backbone's chunk check (rate, length).
    """

    HISTORY = ReadModifyWriteStateSpec("subclip_history", BytesCoder())

    def __init__(self, hop: int, subclip: int, check: Callable[[Any], str | None]) -> None:
        self.hop, self.subclip, self.check = hop, subclip, check
        self.resets = Counter(_METRICS_NS, "subclip_resets")
        self.dead = Counter(_METRICS_NS, "features_dead_letters")

    def setup(self) -> None:
        self.assembler = SubclipAssembler(self.hop, self.subclip)

    def process(
        self, element: tuple[str, Any], history=beam.DoFn.StateParam(HISTORY)
    ) -> Iterator[Any]:
        _, frame = element
        reason = self.check(frame)
        if reason is not None:
            self.dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, to_dead_letter(frame, reason, "features"))
            return
        blob, clip, event = self.assembler.process(
            history.read(), frame.frame_index, frame.ts_ms, as_array(frame.data)
        )
        if blob is not None:
            history.write(blob)
        if event == "reset":
            self.resets.inc()
        yield DecodedFrame(
            frame.stream_id,
            frame.frame_index,
            frame.ts_ms,
            frame.kind,
            ndarray_row(clip),
            frame.rate,
            frame.arrival_ms,
            frame.key,
            frame.value,
            contract.as_headers(frame.headers),
            frame.timestamp_us,
        )


class _KeyByStream(beam.DoFn):
    def process(self, frame: Any) -> Iterator[tuple[str, Any]]:
        yield frame.stream_id, frame


class AssembleSubclips(beam.PTransform):
    """Decoded audio chunks -> each stream's last ``subclip`` samples, one per chunk.

    Steps: ``KeyByStream`` -> ``Assemble`` (:class:`AssembleSubclipsFn`, the history in Beam
    keyed state). Outputs ``main`` (sub-clip :class:`DecodedFrame` rows) and ``dead_letter``.
    ``ExtractFeatures`` runs it before the backbone when the backbone takes sub-clips
    (``vggish``).
    """

    def __init__(self, hop: int, subclip: int, check: Callable[[Any], str | None]) -> None:
        super().__init__()
        SubclipAssembler(hop, subclip)  # validates (cheap)
        self.fn = AssembleSubclipsFn(hop, subclip, check)

    def expand(self, frames: beam.PCollection) -> TaggedOutputs:
        keyed = frames | "KeyByStream" >> beam.ParDo(_KeyByStream()).with_output_types(
            beam.typehints.KV[str, DecodedFrame]  # a deterministic key coder for state
        )
        return typed_outputs(
            keyed
            | "Assemble"
            >> beam.ParDo(self.fn)
            .with_output_types(DecodedFrame)
            .with_outputs(DEAD_LETTER, main=MAIN)
        )
