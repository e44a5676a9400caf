"""Keying frames for the inference DoFns, the idle sweep, and the stage's metrics.

* :class:`KeyFrames` keys each frame by its stream id (one stream per Beam key) or, when streams
  are batched, by its shard (:func:`shard_key`);
* :class:`StreamRegistry` and sweep tokens: on the embedded FnApiRunner, which fires every timer
  right after the bundle that set it, the idle timeout is a TTL plus a sweep: the keying step
  asks the registry once a second for streams idle longer than the TTL and sends each a token
  through the keyed input, so the key's own DoFn call clears the state, as Beam requires;
* :class:`InferenceMetrics`: the counters both inference DoFns update, and
  :class:`InferenceDoFn`, the settings, stepper and registry both share.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import torch

from costream.connectors import contract
from costream.connectors.contract import DeadLetter
from costream.transforms import beam_fixes, counters
from costream.transforms.gc_tuning import tune_gc
from costream.transforms.records import FeatureRecord, feature_record, ndarray_row
from costream.transforms.stepper import load_stepper
from costream.transforms.steps import DEFAULT_GAP_POLICY, DEFAULT_MAX_JUMP, RESET_EVENTS, GapPolicy

__all__ = [
    "SWEEP",
    "InferenceDoFn",
    "InferenceMetrics",
    "KeyFrames",
    "StreamRegistry",
    "Throttled",
    "shard_key",
    "sweep_token",
]

log = logging.getLogger(__name__)


class Throttled:
    """Log at most one line per ``period_s`` per kind, saying how many were held back."""

    def __init__(self, period_s: float = 10.0) -> None:
        self.period_s = period_s
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        held = self._held.pop(kind, 0)
        if held:
            msg += f" ({held} more like this in the last {self.period_s:g} s)"
        log.warning(msg, *args)
        self._next[kind] = now + self.period_s


SWEEP = -1
"""``frame_index`` of a sweep token: a :class:`FeatureRecord` saying "clear this key's state if
it is still idle" (embedded runner only), ``ts_ms`` the sweep's time. A token shares the keyed
input with the frames (Beam's state is per key and input), so it is a row of the same schema."""
_NO_FEATURES = ndarray_row(np.zeros(0, np.float32))


def sweep_token(stream_id: str, swept_ms: int) -> FeatureRecord:
    """The sweep token of ``stream_id`` at ``swept_ms`` (see :data:`SWEEP`)."""
    return FeatureRecord(stream_id, SWEEP, swept_ms, _NO_FEATURES, swept_ms, None, b"", [])


class StreamRegistry:
    """Streams whose state this process holds, oldest-seen first, for the idle sweep and gauges.

    On a runner without usable timers (the embedded FnApiRunner fires every timer right after the
    bundle that set it) an idle stream's state would otherwise stay until that stream's next frame.
    The inference DoFn records each stream's last-seen time and state size here; the keying step
    in front of it (same process) asks :meth:`expired` for streams idle longer than the TTL and
    sends each a sweep token through the keyed input, so the state is cleared by the key's own
    DoFn call, as Beam requires. One registry per :class:`ContinualInference` (by name).
    """

    _ALL: dict[str, StreamRegistry] = {}
    _ALL_LOCK = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()  # id -> (last ms, bytes)
        self._bytes = 0

    @classmethod
    def named(cls, name: str) -> StreamRegistry:
        """The process's registry called ``name`` (created on first use; gauges registered)."""
        with cls._ALL_LOCK:
            reg = cls._ALL.get(name)
            if reg is None:
                reg = cls._ALL[name] = cls()
                counters.register_gauge("streams_held", reg.__len__)
                counters.register_gauge("state_bytes", lambda: reg.state_bytes)
            return reg

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def state_bytes(self) -> int:
        """Bytes of state held, summed over streams (as last written)."""
        return self._bytes

    def seen(self, stream_id: str, now_ms: int, nbytes: int) -> None:
        """The stream stepped at ``now_ms`` and now stores ``nbytes``."""
        with self._lock:
            old = self._seen.pop(stream_id, None)
            self._bytes += nbytes - (0 if old is None else old[1])
            self._seen[stream_id] = (now_ms, nbytes)

    def forget(self, stream_id: str) -> None:
        """The stream's state was cleared."""
        with self._lock:
            old = self._seen.pop(stream_id, None)
            if old is not None:
                self._bytes -= old[1]

    def expired(self, now_ms: int, ttl_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` streams idle for more than ``ttl_ms``, oldest first; taken out."""
        out: list[str] = []
        with self._lock:
            while self._seen and len(out) < limit:
                stream_id, (last_ms, nbytes) = next(iter(self._seen.items()))
                if now_ms - last_ms <= ttl_ms:
                    break
                del self._seen[stream_id]
                self._bytes -= nbytes
                out.append(stream_id)
        return out


def shard_key(stream_id: str, shards: int) -> str:
    """The shard (Beam key) of a stream when streams are batched: a stable hash, ``0..shards-1``.

    CRC32 of the id's UTF-8 bytes, so every worker and every restart agrees (Python's ``hash``
    of a string changes per process).
    """
    return str(zlib.crc32(stream_id.encode()) % shards)


_SHARD_CACHE = 100_000
"""The most stream ids whose shard key a keying step remembers."""


class KeyFrames(beam.DoFn):
    """``record -> (key, record)``, and with a TTL the idle sweep's tokens.

    The key is the stream id, or its shard (:func:`shard_key`) when ``shards`` is set; the sweep
    tokens are described at :class:`StreamRegistry`.
    """

    def __init__(
        self,
        registry: str,
        ttl_ms: int | None,
        sweep_every_s: float = 1.0,
        shards: int | None = None,
    ) -> None:
        self.registry, self.ttl_ms, self.sweep_every_s = registry, ttl_ms, sweep_every_s
        self.shards = shards

    def setup(self) -> None:
        self._next_sweep = time.monotonic() + self.sweep_every_s
        self._shard_of: dict[str, str] = {}  # stream id -> shard key, computed once

    def _key(self, stream_id: str) -> str:
        if self.shards is None:
            return stream_id
        key = self._shard_of.get(stream_id)
        if key is None:
            if len(self._shard_of) >= _SHARD_CACHE:  # many short-lived streams: start again
                self._shard_of.clear()
            key = self._shard_of[stream_id] = shard_key(stream_id, self.shards)
        return key

    def process(self, rec: Any) -> Iterator[tuple[str, FeatureRecord]]:
        if type(rec) is not FeatureRecord or isinstance(rec.features, np.ndarray):
            rec = feature_record(rec, rec.features)  # any row with its fields: this schema
        yield self._key(rec.stream_id), rec
        if self.ttl_ms is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_every_s
        now_ms = int(time.time() * 1000)
        for stream_id in StreamRegistry.named(self.registry).expired(now_ms, self.ttl_ms, 10_000):
            yield self._key(stream_id), sweep_token(stream_id, now_ms)


class InferenceMetrics:
    """The inference stage's counters and distributions (namespace ``costream``).

    Also the throttled log lines for stream epochs and dead letters; shared by both inference
    DoFns.
    """

    def __init__(self) -> None:
        m = "costream"
        # timer callbacks update through the hold; the DoFn's finish_bundle releases it
        self.hold = hold = counters.Hold()

        def counter(name: str) -> counters.Counter:
            return counters.Counter(m, name, hold)

        def distribution(name: str) -> counters.Distribution:
            return counters.Distribution(m, name, hold)

        self.frames_in = counter("frames_in")
        self.detections = counter("detections_out")
        self.warmup = counter("warmup_frames")
        self.duplicates = counter("duplicates")
        self.gaps = counter("gaps")
        self.filled = counter("gap_filled")
        self.resets = counter("state_resets")
        self.epochs = counter("stream_epochs")
        self.dead = counter("dead_letters")
        self.idle_cleared = counter("idle_cleared")
        self.replayed = counter("replayed_frames")
        self.latency = distribution("latency_ms")
        self.state_size = distribution("state_bytes")
        self.read_us = distribution("state_read_us")
        self.write_us = distribution("state_write_us")
        self.serde_us = distribution("serde_us")
        self.model_us = distribution("model_us")
        self.frame_us = distribution("frame_us")
        self.batch_rows = distribution("batch_frames")  # frames per batched step
        self.log = Throttled()

    def __getstate__(self) -> dict:
        return {}  # rebuilt where it is unpickled: the counters share one Hold

    def __setstate__(self, _: dict) -> None:
        self.__init__()  # type: ignore[misc]  # unpickling

    def count(self, stream_id: str, frame_index: int, events: list[str]) -> None:
        """Count a stepped or dropped frame's events (``StepResult.events``)."""
        for event in events:
            if event == "duplicate":
                self.duplicates.inc()
            elif event == "gap":
                self.gaps.inc()
            elif event == "gap_fill":
                self.filled.inc()
            elif event in RESET_EVENTS:
                self.resets.inc()
            if event in ("reboot", "jump"):
                self.epochs.inc()
                self.log.warning(
                    event,
                    "stream %s: frame %d starts a new stream epoch (%s): state reset",
                    stream_id,
                    frame_index,
                    "the frame index went back with a newer capture time"
                    if event == "reboot"
                    else "the frame index jumped forward by more than max_jump",
                )

    def dead_letter(self, rec: Any, error: BaseException) -> DeadLetter:
        """Count and log a refused frame; its dead-letter row (stage ``inference``)."""
        self.dead.inc()
        self.log.warning(
            "dead_letter",
            "stream %s frame %s -> dead letter: %s",
            rec.stream_id,
            rec.frame_index,
            error,
        )
        return contract.dead_letter(rec.key, rec.value, rec.headers, error, "inference")

    def emitted(self, det: Any) -> None:
        """Count a detection that goes out."""
        if not det.warm:
            self.warmup.inc()
        self.detections.inc()
        self.latency.update(int(det.latency_ms))

    def emitted_many(self, dets: Sequence[Any]) -> None:
        """Count detections that go out, as :meth:`emitted` each, with one update per metric."""
        self.warmup.inc(sum(not d.warm for d in dets))
        self.detections.inc(len(dets))
        self.latency.update_counts(Counter(int(d.latency_ms) for d in dets))


class InferenceDoFn(beam.DoFn):
    """The settings, stepper, registry and metrics both inference DoFns share.

    Args: those of :class:`~costream.transforms.inference.ContinualInference`; ``registry``
    names the process's :class:`StreamRegistry` (the idle sweep's), a fresh one by default.
    """

    def __init__(
        self,
        weights: str,
        gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
        max_fill: int | None = None,
        idle_timeout_s: float | None = 600.0,
        idle_timer: bool = True,
        max_jump: int = DEFAULT_MAX_JUMP,
        registry: str = "",
        state_dtype: str = "float32",
    ) -> None:
        self.weights, self.gap_policy, self.max_fill = weights, gap_policy, max_fill
        self.idle_timeout_s, self.idle_timer = idle_timeout_s, idle_timer
        self.max_jump, self.registry = max_jump, registry or uuid.uuid4().hex
        self.state_dtype = state_dtype
        self.metrics = InferenceMetrics()

    @property
    def ttl_ms(self) -> int | None:
        """The idle timeout as a TTL (ms) where no idle timer runs, else ``None``."""
        if self.idle_timeout_s is None or self.idle_timer:
            return None
        return int(self.idle_timeout_s * 1000)

    def setup(self) -> None:
        torch.set_num_threads(1)  # one step is small; thread wake-ups dominate (p99 1.7 s -> 31 ms)
        beam_fixes.apply()  # a cleared (idle) key must not stay in the worker's state cache
        self.stepper = load_stepper(
            self.weights,
            self.gap_policy,
            self.max_fill,
            self.ttl_ms,
            self.max_jump,
            self.state_dtype,
        )
        self._streams = StreamRegistry.named(self.registry) if self.ttl_ms is not None else None
        tune_gc()  # the worker's long-lived objects, model included, out of the collector's walk

    def finish_bundle(self) -> None:
        self.metrics.hold.release()  # what the bundle's timer callbacks counted

    @staticmethod
    def one_thread() -> None:
        """Step with one torch thread: the count is per process, and a backbone may have set more."""
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
