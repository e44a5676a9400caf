"""Cross-stream batching: the frames of many streams that are ready together, one B-row step.

:class:`BatchedInferenceFn` is the stateful DoFn of ``ContinualInference(batch_streams=True)``.
Frames are keyed by shard (:func:`~costream.transforms.streams.shard_key`: CRC32 of the stream
id modulo ``shards``), not by stream, and each shard key holds, in Beam keyed state:

* ``shard``: one :class:`~costream.transforms.stored.ShardCell` value with the cells of all of
  the shard's streams (each a stream's :class:`~costream.transforms.stored.Stored` bytes, the
  same bytes the one-stream path stores);
* ``buffer``: a bag of the frames waiting for their batch (rows, ``RowCoder``, no pickle), and
  ``pending``, their count and when the first of them arrived;
* ``flush``: a processing-time timer, set when a frame lands in an empty buffer, at
  ``max_delay_ms`` after it.

The buffer is flushed in the call of a frame that brings it to ``max_batch`` frames or that
arrives ``max_delay_ms`` or more after the buffer's first frame, and when ``flush`` fires (for
the frames of a lull, when no frame follows): every buffered frame goes through
:meth:`~costream.transforms.stepper.StreamStepper.process_many`, which decides duplicates,
gaps, resets and epochs per stream exactly as the one-stream path does and steps the streams
together; the shard cell is written once per flush. On the embedded FnApiRunner timers fire
right after the bundle that set them, so a flush takes at most the frames of one bundle for that
shard. On Flink a processing-time timer set in a bundle reaches the runner when the bundle ends
(at the latest at the next checkpoint), and its output leaves with the bundle that fires it: the
timer alone would hold a batch for seconds, so under traffic the frames' own arrivals flush it,
and the timer only ends a lull.

Idle streams: at every flush, streams of the shard unseen for ``idle_timeout_s`` are dropped;
with ``idle_timer`` (Flink) a shard unseen that long is cleared by a timer; without it (the
embedded runner) the keying step's sweep tokens reach idle shards as in the one-stream path.

The design, its costs (state bytes written per frame, latency added, rescaling) and its
measurements are in ``docs/batching.md``.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from costream.models.state import StateFormatError
from costream.transforms.allocator import tune_allocator
from costream.transforms.records import FeatureRecord, as_array
from costream.transforms.steps import Frame, StepResult
from costream.transforms.stored import ShardCell, Stored
from costream.transforms.streams import SWEEP, InferenceDoFn, is_replay

__all__ = ["DEAD_LETTER", "BatchedInferenceFn"]

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
_PENDING = struct.Struct("<Id")  # frames in the buffer, wall time (ms) the first one arrived


class BatchedInferenceFn(InferenceDoFn):
    """Stateful DoFn keyed by shard: buffered frames of the shard's streams, stepped together.

    Input: ``(shard key, record)`` (``KeyFrames(shards=...)``); outputs as
    :class:`~costream.transforms.inference.ContinualInferenceFn`: detections, and dead letters
    tagged ``dead_letter``. The arguments are those of ``ContinualInference``.
    """

    SHARD = ReadModifyWriteStateSpec("shard", BytesCoder())
    BUFFER = BagStateSpec("buffer", beam.coders.registry.get_coder(FeatureRecord))
    PENDING = ReadModifyWriteStateSpec("pending", BytesCoder())  # count, first arrival (ms)
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)
    IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)

    def __init__(
        self,
        *args: Any,
        max_batch: int = 64,
        max_delay_ms: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_batch, self.max_delay_ms = int(max_batch), float(max_delay_ms)

    def setup(self) -> None:
        super().setup()
        tune_allocator()  # a shard's value is rebuilt at every flush (transforms/allocator.py)
        self._idle_ms = None if self.idle_timeout_s is None else int(self.idle_timeout_s * 1000)

    def process(
        self,
        element: tuple[str, Any],
        shard=beam.DoFn.StateParam(SHARD),
        buffer=beam.DoFn.StateParam(BUFFER),
        pending=beam.DoFn.StateParam(PENDING),
        flush=beam.DoFn.TimerParam(FLUSH),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        _, rec = element
        if rec.frame_index == SWEEP:
            self._sweep(rec.stream_id, rec.ts_ms, shard)
            return
        t0 = time.perf_counter_ns()
        now_ms = time.time() * 1000
        held = pending.read()
        count, first_ms = _PENDING.unpack(held) if held else (0, now_ms)
        count += 1
        buffer.add(rec)
        if count >= self.max_batch or now_ms - first_ms >= self.max_delay_ms:
            self.metrics.buffer_us.update(round((time.perf_counter_ns() - t0) / 1e3))
            yield from self._flush(shard, buffer, pending, idle)
            return
        pending.write(_PENDING.pack(count, first_ms))
        if count == 1:
            flush.set(Timestamp.now() + Duration(micros=int(self.max_delay_ms * 1000)))
        self.metrics.buffer_us.update(round((time.perf_counter_ns() - t0) / 1e3))

    @on_timer(FLUSH)
    def on_flush(
        self,
        shard=beam.DoFn.StateParam(SHARD),
        buffer=beam.DoFn.StateParam(BUFFER),
        pending=beam.DoFn.StateParam(PENDING),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        with self.metrics.hold.during():  # counted in finish_bundle (counters.Hold)
            yield from self._flush(shard, buffer, pending, idle)

    @on_timer(IDLE)
    def on_idle(self, shard=beam.DoFn.StateParam(SHARD)) -> None:
        with self.metrics.hold.during():
            cells = self._cells(shard)
            shard.clear()
            self.metrics.idle_cleared.inc(len(cells))

    # -- the flush ---------------------------------------------------------------------------------
    def _cells(self, shard: Any) -> dict[str, bytes | memoryview]:
        try:
            return ShardCell.from_bytes(shard.read())
        except StateFormatError as e:  # the shard's streams start again rather than stop
            self.metrics.log.warning("shard", "shard state unreadable, its streams reset: %s", e)
            self.metrics.resets.inc()
            return {}

    def _flush(self, shard: Any, buffer: Any, pending: Any, idle: Any) -> Iterator[Any]:
        m = self.metrics
        recs = list(buffer.read())
        buffer.clear()
        pending.clear()
        if not recs:
            return
        self.one_thread()
        t0 = time.perf_counter_ns()
        cells = self._cells(shard)
        t1 = time.perf_counter_ns()
        now_ms = int(time.time() * 1000)
        touched = {r.stream_id for r in recs}
        evicted = self._evict(cells, now_ms, touched)
        frames: list[Frame] = []
        refused: dict[int, Exception] = {}
        for pos, r in enumerate(recs):
            try:
                frames.append(
                    Frame(r.stream_id, r.frame_index, r.ts_ms, as_array(r.features), r.arrival_ms)
                )
            except Exception as e:  # a row whose features cannot be read: its dead letter
                refused[pos] = e
        try:
            changed, results = self.stepper.process_many(cells, frames, now_ms=now_ms)
        except Exception as e:  # a fault in the batch: settle it frame by frame
            log.exception(
                "batched step failed (%s); stepping the %d frames one by one", e, len(frames)
            )
            changed, results = self.stepper.process_each(cells, frames, now_ms=now_ms)
        t2 = time.perf_counter_ns()
        if changed or evicted:
            cells.update(changed)
            _store(shard, cells)
        t3 = time.perf_counter_ns()
        m.batch_rows.update(len(recs))
        read_us = round((t1 - t0) / 1e3 / len(recs))  # the flush's state I/O, per frame
        write_us = round((t3 - t2) / 1e3 / len(recs))
        if self._streams is not None:
            for sid in changed:
                self._streams.seen(sid, now_ms, len(cells[sid]))
        if self.idle_timer and self.idle_timeout_s is not None:
            idle.set(Timestamp.now() + Duration(seconds=self.idle_timeout_s))
        per_frame_us = round((t3 - t0) / 1e3 / len(recs))
        it = iter(results)
        for pos, rec in enumerate(recs):
            replay = is_replay(rec.headers)
            (m.replayed if replay else m.frames_in).inc()
            res: StepResult = StepResult(None, error=refused[pos]) if pos in refused else next(it)
            if res.error is not None:
                if not replay:  # a replayed frame's dead letter was written before the restart
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, m.dead_letter(rec, res.error))
                continue
            if not replay:
                m.count(rec.stream_id, rec.frame_index, res.events)
            m.serde_us.update(round(res.decode_us + res.encode_us))
            m.read_us.update(read_us)
            m.write_us.update(write_us)
            m.frame_us.update(per_frame_us)
            det = res.detection
            if det is None:
                continue
            m.model_us.update(round(res.model_us))
            m.state_size.update(res.state_bytes)
            if not replay:
                m.emitted(det)
                yield det

    def _evict(self, cells: dict[str, bytes | memoryview], now_ms: int, touched: set[str]) -> int:
        """Drop the shard's streams idle for longer than the timeout; how many were dropped.

        A stream with a frame in this flush is left to the stepper where it checks a TTL (it
        reports ``expired``); with a real idle timer (Flink) the stepper has no TTL, so such a
        stream is dropped here, as the one-stream path's timer would have cleared it.
        """
        if self._idle_ms is None:
            return 0
        gone = [
            sid
            for sid, cell in cells.items()
            if now_ms - Stored.last_seen(cell) > self._idle_ms
            and not (sid in touched and self.stepper.ttl_ms is not None)
        ]
        for sid in gone:
            del cells[sid]
            if self._streams is not None:
                self._streams.forget(sid)
        self.metrics.idle_cleared.inc(len(gone))
        return len(gone)

    def _sweep(self, stream_id: str, swept_ms: int, shard: Any) -> None:
        """A sweep token: drop ``stream_id`` from its shard if it is still idle."""
        cells = self._cells(shard)
        cell = cells.get(stream_id)
        if cell is None:
            return
        last_seen = Stored.last_seen(cell)
        if self._idle_ms is not None and swept_ms - last_seen > self._idle_ms:
            del cells[stream_id]
            _store(shard, cells)
            self.metrics.idle_cleared.inc()
        elif self._streams is not None:  # a frame came in since: still held
            self._streams.seen(stream_id, last_seen, len(cell))


def _store(shard: Any, cells: dict[str, bytes | memoryview]) -> None:
    """Write the shard's cells as its one value (or clear it when no stream is left)."""
    if cells:
        shard.write(ShardCell.to_bytes(cells))
    else:
        shard.clear()
