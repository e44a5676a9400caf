"""Cross-stream batching: the frames of many streams that are ready together, one B-row step.

Two DoFns make ``ContinualInference(batch_streams=True)``:

* :class:`GroupFrames` (stateless, before the shuffle) keys each frame by shard
  (:func:`~costream.transforms.streams.shard_key`: CRC32 of the stream id modulo ``shards``) and
  gathers a bundle's frames per shard into groups, in arrival order: a group goes out when it
  holds ``max_batch`` frames, when a frame arrives ``max_delay_ms`` or more after the group's
  first one, and at the end of the bundle. On in-process runners (the FnApiRunner) size does
  not cut groups: the reader's bundle holds its partitions one after the other, so a group cut
  by size would hold one partition's streams; there the stateful step is fused with the reader
  and a group cut by delay is stepped at once. ``max_delay_ms: auto`` (the default) cuts by no
  delay there: a group is the shard's frames of the reader's bundle, which ends once the
  reader has caught up with the broker; elsewhere it is 20 ms
  (:func:`~costream.transforms.inference.group_delay_ms`).
* :class:`BatchedInferenceFn` (stateful, keyed by shard) steps each group at once. Each shard
  key holds, in Beam keyed state, ``shard``: one :class:`~costream.transforms.stored.ShardCell`
  value with the cells of all of the shard's streams (each a stream's
  :class:`~costream.transforms.stored.Stored` bytes, the same bytes the one-stream path
  stores). A group is one state read, one
  :meth:`~costream.transforms.stepper.StreamStepper.process_many` (which decides duplicates,
  gaps, resets and epochs per stream exactly as the one-stream path does and steps the streams
  together, ``max_batch`` rows at most per model step) and one state write, whatever its size:
  no per-frame state access.

Idle streams: at every step, streams of the shard unseen for ``idle_timeout_s`` are dropped;
with ``idle_timer`` (Flink) a shard unseen that long is cleared by a timer; without it (the
embedded runner) the keying step's sweep tokens reach idle shards as in the one-stream path.

State written by earlier versions, which buffered frames in keyed state (``buffer``,
``pending``) until a ``flush`` timer or a later frame stepped them, is still read: such a
buffer is stepped when its timer fires.

The design, its costs (state bytes written per frame, latency added, rescaling) and its
measurements are in ``docs/batching.md``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
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
from apache_beam.utils.windowed_value import WindowedValue

from costream.connectors.contract import is_replay
from costream.models.state import StateFormatError
from costream.transforms.allocator import tune_allocator
from costream.transforms.records import FeatureRecord, as_array
from costream.transforms.steps import Frame, StepResult
from costream.transforms.stored import ShardCell, Stored
from costream.transforms.streams import SWEEP, InferenceDoFn, KeyFrames

__all__ = ["DEAD_LETTER", "BatchedInferenceFn", "GroupFrames"]

log = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"


class _Group:
    """A shard's frames gathered in a bundle: the frames, when the first came, the latest time."""

    __slots__ = ("frames", "first_s", "timestamp")

    def __init__(self, first_s: float, timestamp: Timestamp) -> None:
        self.frames: list[FeatureRecord] = []
        self.first_s, self.timestamp = first_s, timestamp


class GroupFrames(KeyFrames):
    """``record -> (shard key, [records])``: a bundle's frames grouped by shard, in arrival order.

    The keys and the idle sweep's tokens are :class:`~costream.transforms.streams.KeyFrames`'s
    (a token travels in its shard's group, in order). A group is emitted when it holds
    ``max_batch`` frames (None: never), when a frame arrives ``max_delay_ms`` or more after the
    group's first one (None: never), and at the end of the bundle, with the latest timestamp
    of its frames, in their window.
    """

    def __init__(
        self,
        registry: str,
        ttl_ms: int | None,
        sweep_every_s: float,
        shards: int,
        max_batch: int | None,
        max_delay_ms: float | None,
    ) -> None:
        super().__init__(registry, ttl_ms, sweep_every_s, shards)
        self.max_batch = None if max_batch is None else int(max_batch)
        self.max_delay_s = None if max_delay_ms is None else float(max_delay_ms) / 1000

    def start_bundle(self) -> None:
        self._groups: dict[tuple[str, Any], _Group] = {}

    def process(  # type: ignore[override]
        self,
        rec: Any,
        # the whole windowed value, not the window and timestamp parameters: a WindowParam
        # makes Beam rebuild the call's arguments for every element
        wv: WindowedValue = beam.DoFn.WindowedValueParam,
    ) -> Iterator[WindowedValue]:
        now_s = time.monotonic()
        timestamp = wv.timestamp
        for window in wv.windows:
            for key, r in super().process(rec):
                g = self._groups.get((key, window))
                if g is None:
                    g = self._groups[(key, window)] = _Group(now_s, timestamp)
                g.frames.append(r)
                if timestamp > g.timestamp:
                    g.timestamp = timestamp
                if (self.max_batch is not None and len(g.frames) >= self.max_batch) or (
                    self.max_delay_s is not None and now_s - g.first_s >= self.max_delay_s
                ):
                    del self._groups[(key, window)]
                    yield WindowedValue((key, g.frames), g.timestamp, (window,))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        groups, self._groups = self._groups, {}
        for (key, window), g in groups.items():
            yield WindowedValue((key, g.frames), g.timestamp, (window,))


class BatchedInferenceFn(InferenceDoFn):
    """Stateful DoFn keyed by shard: each group of the shard's frames stepped together.

    Input: ``(shard key, [records])`` (:class:`GroupFrames`); outputs as
    :class:`~costream.transforms.inference.ContinualInferenceFn`: detections, and dead letters
    tagged ``dead_letter``. The arguments are those of ``ContinualInference``; ``max_rows``:
    the most rows of one model step (``ContinualInference``'s ``max_batch``).
    """

    SHARD = ReadModifyWriteStateSpec("shard", BytesCoder())
    # the frame buffer of earlier versions (stepped when its flush timer fires; never written)
    BUFFER = BagStateSpec("buffer", beam.coders.registry.get_coder(FeatureRecord))
    PENDING = ReadModifyWriteStateSpec("pending", BytesCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)
    IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)

    def __init__(self, *args: Any, max_rows: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_rows = max_rows  # the most rows of one model step (None: a round's streams)

    def setup(self) -> None:
        super().setup()
        tune_allocator()  # a shard's value is rebuilt at every step (transforms/allocator.py)
        self._idle_ms = None if self.idle_timeout_s is None else int(self.idle_timeout_s * 1000)

    def process(
        self,
        element: tuple[str, list[Any]],
        shard=beam.DoFn.StateParam(SHARD),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        _, recs = element
        run: list[Any] = []  # the frames since the last sweep token
        for rec in recs:
            if rec.frame_index != SWEEP:
                run.append(rec)
                continue
            if run:
                yield from self._step(shard, run, idle)
                run = []
            self._sweep(rec.stream_id, rec.ts_ms, shard)
        if run:
            yield from self._step(shard, run, idle)

    @on_timer(FLUSH)
    def on_flush(
        self,
        shard=beam.DoFn.StateParam(SHARD),
        buffer=beam.DoFn.StateParam(BUFFER),
        pending=beam.DoFn.StateParam(PENDING),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        recs = list(buffer.read())
        buffer.clear()
        pending.clear()
        if recs:
            with self.metrics.hold.during():  # counted in finish_bundle (counters.Hold)
                yield from self._step(shard, recs, idle)

    @on_timer(IDLE)
    def on_idle(self, shard=beam.DoFn.StateParam(SHARD)) -> None:
        with self.metrics.hold.during():
            cells = self._cells(shard)
            shard.clear()
            self.metrics.idle_cleared.inc(len(cells))

    # -- the step ----------------------------------------------------------------------------------
    def _cells(self, shard: Any) -> dict[str, bytes | memoryview]:
        try:
            return ShardCell.from_bytes(shard.read())
        except StateFormatError as e:  # the shard's streams start again rather than stop
            self.metrics.log.warning("shard", "shard state unreadable, its streams reset: %s", e)
            self.metrics.resets.inc()
            return {}

    def _step(self, shard: Any, recs: list[Any], idle: Any) -> Iterator[Any]:
        """Step ``recs`` (frames of the shard, in arrival order): one state read and write."""
        m = self.metrics
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
            changed, results = self.stepper.process_many(
                cells, frames, now_ms=now_ms, max_rows=self.max_rows
            )
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
        read_us = round((t1 - t0) / 1e3 / len(recs))  # the step's state I/O, per frame
        write_us = round((t3 - t2) / 1e3 / len(recs))
        if self._streams is not None:
            for sid in changed:
                self._streams.seen(sid, now_ms, len(cells[sid]))
        if self.idle_timer and self.idle_timeout_s is not None:
            idle.set(Timestamp.now() + Duration(seconds=self.idle_timeout_s))
        per_frame_us = round((t3 - t0) / 1e3 / len(recs))
        # per-frame metrics, counted per step: the step's per-frame means are the same for
        # every frame of it (Distribution.update_counts)
        fresh = replays = stepped = 0
        serde: Counter[int] = Counter()
        model: Counter[int] = Counter()
        size: Counter[int] = Counter()
        emitted: list[Any] = []
        it = iter(results)
        for pos, rec in enumerate(recs):
            replay = is_replay(rec.headers)
            if replay:
                replays += 1
            else:
                fresh += 1
            res: StepResult = StepResult(None, error=refused[pos]) if pos in refused else next(it)
            if res.error is not None:
                if not replay:  # a replayed frame's dead letter was written before the restart
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, m.dead_letter(rec, res.error))
                continue
            if not replay and res.events:
                m.count(rec.stream_id, rec.frame_index, res.events)
            stepped += 1
            serde[round(res.decode_us + res.encode_us)] += 1
            det = res.detection
            if det is None:
                continue
            model[round(res.model_us)] += 1
            size[res.state_bytes] += 1
            if not replay:
                emitted.append(det)
                yield det
        m.frames_in.inc(fresh)
        m.replayed.inc(replays)
        m.emitted_many(emitted)
        m.serde_us.update_counts(serde)
        m.model_us.update_counts(model)
        m.state_size.update_counts(size)
        for dist, value in (
            (m.read_us, read_us),
            (m.write_us, write_us),
            (m.frame_us, per_frame_us),
        ):
            dist.update_counts({value: stepped})

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
