"""Stateful continual inference: each stream's continual state lives in Beam keyed state.

Two layers, as STYLE.md asks:

* :class:`StreamStepper` is the plain per-frame update, ``(stored bytes, frame) -> (stored bytes,
  result)``, unit-tested without Beam: duplicate detection, the gap policy, model-change and TTL
  resets, the model step, and the detection row.
* :class:`ContinualInferenceFn` is the thin stateful DoFn: read the stream's bytes, call the
  stepper, write the bytes, emit; failures of one frame go to the ``dead_letter`` output and the
  stream's state stays as it was before that frame.

What one stream stores (one state cell, one read and one write per frame), see :class:`Stored`:
the model identity (``name@sha256[:12]``), the last frame index, the last-seen wall time (TTL),
the last features (for the ``fill`` gap policy) and the model's one-row state
(``StreamState.to_bytes``: raw tensors, no pickle).

Results depend only on the frames: each step's positional phase is the frame's own index
(``frame_index % pe_size``), never a count of frames since the state was (re)started. So after
any reset (a restart, a gap, an idle expiry, a reboot) a stream's detections equal those of an
uninterrupted run as soon as it has seen n frames again.

What a frame ``i`` does to a stream whose newest frame was ``last`` (index) at ``last_ts``:

* ``i == last + 1``: one step.
* ``i <= last`` and ``ts_ms <= last_ts``: a genuine repeat (a redelivery, a producer retry, a
  replay of old records): dropped as a ``duplicate``, the state untouched.
* ``i <= last`` and ``ts_ms > last_ts``: the source started counting again (a camera reboot): a new
  **stream epoch**; the state resets and the frame is stepped.
* ``i > last + max_jump``: an implausible forward jump (default 2**32 frames, over a year at
  100 fps): also a new epoch. Either is counted (``stream_epochs``) and logged at most once per
  10 s per kind.
* ``last + 1 < i <= last + max_jump``: a gap, handled by the gap policy.

Gap policies, when frame ``i`` follows ``last`` with ``i > last + 1``:

* ``fill`` (the default): feed the last frame's features for each missing index
  (sample-and-hold), then the new frame; a gap longer than ``max_fill`` frames (default
  :data:`DEFAULT_MAX_FILL`) resets instead (filling a long outage would fabricate a whole
  window). A frame that was dead-lettered (a corrupt JPEG, NaN features) leaves a one-frame gap,
  so by default it costs no warm-up: its slot in the window holds the previous frame.
* ``reset``: forget the stream's past; the next ``n - 1`` detections are warm-up again.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import torch
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp
from costream.connectors import contract
from costream.connectors.contract import REPLAY_HEADER
from costream.models.state import StateFormatError, StreamState
from costream.transforms import beam_fixes, counters
from costream.transforms.records import (
    FeatureRecord,
    as_array,
    feature_record,
    ndarray_row,
    typed_outputs,
)

__all__ = [
    "DEFAULT_GAP_POLICY",
    "DEFAULT_MAX_FILL",
    "DEFAULT_MAX_JUMP",
    "ContinualInference",
    "ContinualInferenceFn",
    "GapPolicy",
    "StepResult",
    "Stored",
    "StreamRegistry",
    "StreamStepper",
    "iter_detections",
    "load_stepper",
]

log = logging.getLogger(__name__)

GapPolicy = Literal["reset", "fill"]
GAP_POLICIES = ("reset", "fill")
DEFAULT_GAP_POLICY: GapPolicy = "fill"
DEFAULT_MAX_FILL = 8
"""Longest gap (frames) the ``fill`` policy bridges unless ``max_fill`` says otherwise."""
DEFAULT_MAX_JUMP = 2**32
"""A forward jump of more frames than this starts a new stream epoch instead of a gap."""


def _check_gap_policy(gap_policy: str) -> None:
    if gap_policy not in GAP_POLICIES:
        raise ValueError(
            f"gap_policy must be one of {', '.join(GAP_POLICIES)}, got {gap_policy!r}."
        )


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


@dataclass
class StepResult:
    """Outcome of one input frame: a detection, or ``None`` for a dropped duplicate.

    The three timings (microseconds, ``time.perf_counter_ns``) split the stepper's work so the
    streaming job can report where per-frame time goes (issue 6): ``decode_us`` turns the stored
    bytes into a model state (``Stored`` and ``StreamState.from_bytes``, or ``init_state``),
    ``model_us`` is the continual step(s), gap fills included, and the softmax, ``encode_us``
    is ``StreamState.to_bytes`` and ``Stored.to_bytes``. A duplicate has only ``decode_us``.
    """

    detection: contract.Detection | None
    events: list[str] = field(
        default_factory=list
    )  # duplicate, gap, gap_reset, gap_fill, model_change, expired, reboot, jump
    state_bytes: int = 0
    decode_us: float = 0.0
    model_us: float = 0.0
    encode_us: float = 0.0


class StreamStepper:
    """Per-frame update of one stream's continual state (plain logic, no Beam).

    Args:
        model: a continual model with ``init_state(1)``, ``step(x (1, D_in), state, index (1,))
            -> (out with .scores (1, C) and .warm (1,), state)``, ``config.d_in`` and ``window``.
        model_id: ``name@sha256-prefix``; a stream whose stored state names another model is reset.
        labels: the C class names.
        gap_policy: ``fill`` or ``reset`` (module docstring).
        max_fill: longest gap ``fill`` bridges (default :data:`DEFAULT_MAX_FILL`, at most n).
        ttl_ms: state older than this (wall time since the stream's last frame) is treated as
            expired and reset; the embedded runner's replacement for the idle timer.
        max_jump: a forward jump of more frames than this is a new stream epoch (module docstring).
    """

    def __init__(
        self,
        model: Any,
        model_id: str,
        labels: Sequence[str],
        gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
        max_fill: int | None = None,
        ttl_ms: int | None = None,
        max_jump: int = DEFAULT_MAX_JUMP,
    ) -> None:
        _check_gap_policy(gap_policy)
        self.model, self.model_id, self.labels = model, model_id, list(labels)
        self.gap_policy = gap_policy
        self.max_fill = min(DEFAULT_MAX_FILL, model.window) if max_fill is None else int(max_fill)
        self.ttl_ms = ttl_ms
        self.max_jump = int(max_jump)
        self.d_in = int(model.config.d_in)

    def process(
        self,
        stored: bytes | None,
        stream_id: str,
        frame_index: int,
        ts_ms: int,
        features: np.ndarray,
        *,
        now_ms: int | None = None,
        arrival_ms: float | None = None,
    ) -> tuple[bytes | None, StepResult]:
        """Apply one frame. Returns the bytes to store (``None``: keep what is stored) and the result.

        Raises:
            ValueError: the features have the wrong size or are not finite (the stream's stored
                state is untouched; the caller dead-letters the frame).
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        x = np.asarray(features, dtype=np.float32).reshape(-1)
        if x.shape[0] != self.d_in:
            raise ValueError(f"Features have {x.shape[0]} values; the model expects {self.d_in}.")
        if not np.isfinite(x).all():
            raise ValueError(
                "Features contain NaN or infinite values; they would poison the stream's state."
            )
        events: list[str] = []
        t0 = time.perf_counter_ns()
        prev = Stored.from_bytes(stored) if stored else None
        if prev is not None and prev.model != self.model_id:
            events.append("model_change")
            prev = None
        if (
            prev is not None
            and self.ttl_ms is not None
            and now_ms - prev.last_seen_ms > self.ttl_ms
        ):
            events.append("expired")
            prev = None
        if prev is not None and frame_index <= prev.last_index:
            if prev.last_ts_ms is None or ts_ms <= prev.last_ts_ms:
                return None, StepResult(None, ["duplicate"], decode_us=_us(t0))
            events.append("reboot")  # counting from 0 again, with newer capture times
            prev = None
        elif prev is not None and frame_index - prev.last_index > self.max_jump:
            events.append("jump")
            prev = None

        state = self.model.init_state(1) if prev is None else StreamState.from_bytes(prev.state)
        t1 = time.perf_counter_ns()
        if prev is not None and frame_index > prev.last_index + 1:
            missing = frame_index - prev.last_index - 1
            events.append("gap")
            if self.gap_policy == "fill" and missing <= self.max_fill:
                events.append("gap_fill")
                hold = torch.from_numpy(prev.last_features).unsqueeze(0)
                for i in range(prev.last_index + 1, frame_index):
                    _, state = self.model.step(hold, state, torch.tensor([i]))
            else:
                events.append("gap_reset")
                state = self.model.init_state(1)

        index = torch.tensor([frame_index])  # the phase comes from the frame, not the state
        out, state = self.model.step(torch.from_numpy(x).unsqueeze(0), state, index)
        probs = torch.softmax(out.scores[0].double(), dim=-1).tolist()
        t2 = time.perf_counter_ns()
        latency = 0.0 if arrival_ms is None else max(0.0, time.time() * 1000 - arrival_ms)
        det = contract.make_detection(
            stream_id,
            frame_index,
            ts_ms,
            probs,
            self.labels,
            warm=bool(out.warm[0]),
            model=self.model_id,
            latency_ms=latency,
        )
        t3 = time.perf_counter_ns()
        last_ts = ts_ms if prev is None or prev.last_ts_ms is None else max(ts_ms, prev.last_ts_ms)
        blob = Stored(self.model_id, frame_index, now_ms, x, state.to_bytes(), last_ts).to_bytes()
        return blob, StepResult(
            det,
            events,
            len(blob),
            decode_us=(t1 - t0) / 1e3,
            model_us=(t2 - t1) / 1e3,
            encode_us=_us(t3),
        )


def _us(since_ns: int) -> float:
    """Microseconds from ``since_ns`` (``time.perf_counter_ns``) to now."""
    return (time.perf_counter_ns() - since_ns) / 1e3


def iter_detections(
    stepper: StreamStepper, frames: Iterator[tuple[str, int, int, np.ndarray]]
) -> Iterator[contract.Detection]:
    """Run frames (stream_id, frame_index, ts_ms, features) through per-stream stored bytes.

    The same update the streaming DoFn performs, with a dict in place of Beam state; used by
    ``costream score`` so offline and streaming outputs are produced by one code path.
    """
    store: dict[str, bytes] = {}
    for stream_id, index, ts, feats in frames:
        blob, result = stepper.process(store.get(stream_id), stream_id, index, ts, feats, now_ms=0)
        if blob is not None:
            store[stream_id] = blob
        if result.detection is not None:
            yield result.detection


# --- Beam -------------------------------------------------------------------------------------


DEAD_LETTER = "dead_letter"
DETECTIONS = "detections"

_STEPPERS: dict[tuple, StreamStepper] = {}
_STEPPERS_LOCK = threading.Lock()


def load_stepper(
    weights: str,
    gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
    max_fill: int | None = None,
    ttl_ms: int | None = None,
    max_jump: int = DEFAULT_MAX_JUMP,
) -> StreamStepper:
    """The continual model of a weights file, wrapped in a stepper; loaded once per process."""
    key = (str(weights), gap_policy, max_fill, ttl_ms, max_jump)
    with _STEPPERS_LOCK:
        if key not in _STEPPERS:
            from costream.models.zoo import load_model

            model, card = load_model(weights, continual=True)
            model_id = f"{card['continual_name']}@{card['sha256'][:12]}"
            _STEPPERS[key] = StreamStepper(
                model, model_id, card["classes"], gap_policy, max_fill, ttl_ms, max_jump
            )
        return _STEPPERS[key]


class _Throttled:
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


_SWEEP = -1
"""``frame_index`` of a sweep token: a :class:`FeatureRecord` saying "clear this key's state if
it is still idle" (embedded runner only), ``ts_ms`` the sweep's time. A token shares the keyed
input with the frames (Beam's state is per key and input), so it is a row of the same schema."""
_NO_FEATURES = ndarray_row(np.zeros(0, np.float32))


def _sweep_token(stream_id: str, swept_ms: int) -> FeatureRecord:
    return FeatureRecord(stream_id, _SWEEP, swept_ms, _NO_FEATURES, swept_ms, None, b"", [])


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


class _KeyByStream(beam.DoFn):
    """``record -> (stream_id, record)``; with a TTL, also the idle sweep's tokens (see registry)."""

    def __init__(self, registry: str, ttl_ms: int | None, sweep_every_s: float = 1.0) -> None:
        self.registry, self.ttl_ms, self.sweep_every_s = registry, ttl_ms, sweep_every_s

    def setup(self) -> None:
        self._next_sweep = time.monotonic() + self.sweep_every_s

    def process(self, rec: Any) -> Iterator[tuple[str, FeatureRecord]]:
        if type(rec) is not FeatureRecord or type(rec.features) is np.ndarray:
            rec = feature_record(rec, rec.features)  # any row with its fields: this schema
        yield rec.stream_id, rec
        if self.ttl_ms is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_every_s
        now_ms = int(time.time() * 1000)
        for stream_id in StreamRegistry.named(self.registry).expired(now_ms, self.ttl_ms, 10_000):
            yield stream_id, _sweep_token(stream_id, now_ms)


def _is_replay(headers: Sequence[tuple[str, bytes]]) -> bool:
    return any(k == REPLAY_HEADER for k, _ in headers)


class ContinualInferenceFn(beam.DoFn):
    """Stateful DoFn keyed by stream id: one continual step per frame, state in Beam state.

    Input: ``(stream_id, record)`` where ``record`` has ``stream_id, frame_index, ts_ms,
    features, arrival_ms`` and the original ``key, value, headers`` (for dead letters).
    Main output: :class:`~costream.connectors.contract.Detection` rows (``WriteToKafka`` writes
    each as the detection JSON of docs/stream-contract.md, key = stream id). Tagged output ``dead_letter``:
    :class:`~costream.connectors.contract.DeadLetter` rows, the original record with stage
    ``inference``.

    Replayed frames (header ``costream.replay``, set by ``ReadFromKafka(warm_restart_frames=...)``
    on the records just before the committed offsets) step the state like any frame but emit
    nothing: their detections and dead letters were written before the restart.

    ``idle_timeout_s``: on runners with real processing-time timers (Flink) an idle timer clears a
    stream's state after that long without frames (``idle_timer=True``). The embedded FnApiRunner
    fires processing-time timers right after the bundle that set them, which would wipe state
    every frame, so there ``idle_timer=False`` and the same timeout is enforced as a TTL checked
    when the next frame arrives, plus a sweep (:class:`StreamRegistry`) that clears streams that
    never send another frame.

    Per-frame time split (Beam distributions in namespace ``costream``, integer microseconds, one
    update per frame that was not dead-lettered): ``state_read_us`` (``stream.read()``),
    ``serde_us`` (state bytes decoded and encoded, :class:`StepResult`), ``model_us`` (the step
    and softmax; frames that stepped), ``state_write_us`` (``stream.write()``; frames that
    stepped) and ``frame_us`` (the whole call up to the emitted row, so the remainder is
    validation and building the detection; the writer makes its JSON). On the FnApiRunner and
    other portable runners a write only buffers: the bytes reach the runner when the bundle
    commits, outside these timings; a read fetches from the runner (or its cache) once per
    stream and bundle.
    """

    STREAM = ReadModifyWriteStateSpec("stream", BytesCoder())
    IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)

    def __init__(
        self,
        weights: str,
        gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
        max_fill: int | None = None,
        idle_timeout_s: float | None = 600.0,
        idle_timer: bool = True,
        max_jump: int = DEFAULT_MAX_JUMP,
        registry: str = "",
    ) -> None:
        self.weights, self.gap_policy, self.max_fill = weights, gap_policy, max_fill
        self.idle_timeout_s, self.idle_timer = idle_timeout_s, idle_timer
        self.max_jump, self.registry = max_jump, registry or uuid.uuid4().hex
        m = "costream"
        self.frames_in = counters.Counter(m, "frames_in")
        self.detections = counters.Counter(m, "detections_out")
        self.warmup = counters.Counter(m, "warmup_frames")
        self.duplicates = counters.Counter(m, "duplicates")
        self.gaps = counters.Counter(m, "gaps")
        self.filled = counters.Counter(m, "gap_filled")
        self.resets = counters.Counter(m, "state_resets")
        self.epochs = counters.Counter(m, "stream_epochs")
        self.dead = counters.Counter(m, "dead_letters")
        self.idle_cleared = counters.Counter(m, "idle_cleared")
        self.replayed = counters.Counter(m, "replayed_frames")
        self.latency = Metrics.distribution(m, "latency_ms")
        self.state_size = Metrics.distribution(m, "state_bytes")
        self.read_us = Metrics.distribution(m, "state_read_us")
        self.write_us = Metrics.distribution(m, "state_write_us")
        self.serde_us = Metrics.distribution(m, "serde_us")
        self.model_us = Metrics.distribution(m, "model_us")
        self.frame_us = Metrics.distribution(m, "frame_us")

    @property
    def ttl_ms(self) -> int | None:
        """The idle timeout as a TTL (ms) where no idle timer runs, else ``None``."""
        if self.idle_timeout_s is None or self.idle_timer:
            return None
        return int(self.idle_timeout_s * 1000)

    def setup(self) -> None:
        torch.set_num_threads(1)  # one step is small; thread wake-ups dominate (p99 1.7 s -> 31 ms)
        beam_fixes.apply()  # a cleared (idle) stream must not stay in the worker's state cache
        self.stepper = load_stepper(
            self.weights, self.gap_policy, self.max_fill, self.ttl_ms, self.max_jump
        )
        self._streams = StreamRegistry.named(self.registry) if self.ttl_ms is not None else None
        self._log = _Throttled()

    def _count(self, stream_id: str, rec: Any, events: list[str]) -> None:
        for event in events:
            if event == "duplicate":
                self.duplicates.inc()
            elif event == "gap":
                self.gaps.inc()
            elif event == "gap_fill":
                self.filled.inc()
            elif event in ("gap_reset", "model_change", "expired", "reboot", "jump"):
                self.resets.inc()
            if event in ("reboot", "jump"):
                self.epochs.inc()
                self._log.warning(
                    event,
                    "stream %s: frame %d starts a new stream epoch (%s): state reset",
                    stream_id,
                    rec.frame_index,
                    "the frame index went back with a newer capture time"
                    if event == "reboot"
                    else "the frame index jumped forward by more than max_jump",
                )

    def _expire(self, stream_id: str, swept_ms: int, stream: Any) -> None:
        stored = stream.read()
        if not stored:
            return
        ttl = self.ttl_ms
        last_seen = Stored.from_bytes(stored).last_seen_ms
        if ttl is not None and swept_ms - last_seen > ttl:
            stream.clear()
            self.idle_cleared.inc()
        elif self._streams is not None:  # a frame came in since: still held
            self._streams.seen(stream_id, last_seen, len(stored))

    def process(
        self,
        element: tuple[str, Any],
        stream=beam.DoFn.StateParam(STREAM),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        stream_id, rec = element
        if rec.frame_index == _SWEEP:
            self._expire(stream_id, rec.ts_ms, stream)
            return
        replay = _is_replay(rec.headers)
        (self.replayed if replay else self.frames_in).inc()
        t0 = time.perf_counter_ns()
        stored = stream.read()
        t1 = time.perf_counter_ns()
        try:
            blob, result = self.stepper.process(
                stored,
                stream_id,
                rec.frame_index,
                rec.ts_ms,
                as_array(rec.features),
                arrival_ms=rec.arrival_ms,
            )
        except Exception as e:  # one bad frame must not stop the stream or the pipeline
            if replay:  # its dead letter was written before the restart
                return
            self.dead.inc()
            self._log.warning(
                "dead_letter",
                "stream %s frame %s -> dead letter: %s",
                stream_id,
                rec.frame_index,
                e,
            )
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, contract.dead_letter(rec.key, rec.value, rec.headers, e, "inference")
            )
            return
        if not replay:
            self._count(stream_id, rec, result.events)
        if blob is not None:
            t2 = time.perf_counter_ns()
            stream.write(blob)
            self.write_us.update(round(_us(t2)))
            self.model_us.update(round(result.model_us))
            self.state_size.update(result.state_bytes)
            if self._streams is not None:
                self._streams.seen(stream_id, int(time.time() * 1000), len(blob))
        if self.idle_timer and self.idle_timeout_s is not None:
            idle.set(Timestamp.now() + Duration(seconds=self.idle_timeout_s))
        self.read_us.update(round((t1 - t0) / 1e3))
        self.serde_us.update(round(result.decode_us + result.encode_us))
        det = result.detection
        if det is None or replay:
            self.frame_us.update(round(_us(t0)))
            return
        if not det.warm:
            self.warmup.inc()
        self.detections.inc()
        self.latency.update(int(det.latency_ms))
        self.frame_us.update(round(_us(t0)))
        yield det

    @on_timer(IDLE)
    def on_idle(self, stream=beam.DoFn.StateParam(STREAM)) -> None:
        stream.clear()
        self.idle_cleared.inc()


class ContinualInference(beam.PTransform):
    """Frames' features -> per-frame detections, each stream's continual state in keyed state.

    Input: :class:`~costream.transforms.records.FeatureRecord` rows (``ExtractFeatures.main``),
    or any rows with its fields. Returns a dict of PCollections: ``detections``
    (:class:`~costream.connectors.contract.Detection` rows: ``stream_id, frame_index, ts_ms,
    scores, labels, top_label, top_score, warm, model, latency_ms``; ``WriteToKafka`` writes
    the detection JSON of docs/stream-contract.md) and ``dead_letter`` (:class:`~costream.connectors.contract.DeadLetter`
    rows for ``WriteDeadLetters``). Beam YAML's transforms take the detections as they are::

        - type: Filter
          input: ContinualInference.detections
          config: {keep: "warm and top_score > 0.9"}

    Example (YAML)::

        - type: ContinualInference
          input: ExtractFeatures
          config: {weights: pipelines/assets/demo_model.safetensors, gap_policy: fill}
    """

    def __init__(
        self,
        weights: str,
        gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
        max_fill: int | None = None,
        idle_timeout_s: float | None = 600.0,
        idle_timer: bool = True,
        max_jump: int = DEFAULT_MAX_JUMP,
    ) -> None:
        super().__init__()
        _check_gap_policy(gap_policy)
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(
                f"idle_timeout_s must be positive seconds (or null to keep state forever), got {idle_timeout_s}."
            )
        if max_fill is not None and max_fill < 0:
            raise ValueError(f"max_fill must be >= 0 frames, got {max_fill}.")
        if max_jump < 1:
            raise ValueError(f"max_jump must be >= 1 frame, got {max_jump}.")
        self.fn = ContinualInferenceFn(
            weights, gap_policy, max_fill, idle_timeout_s, idle_timer, max_jump
        )
        self.sweep_every_s = 1.0  # seconds between idle sweeps where a TTL replaces the timer

    def expand(self, frames: beam.PCollection) -> dict[str, beam.PCollection]:
        keyed = frames | "KeyByStream" >> beam.ParDo(
            _KeyByStream(self.fn.registry, self.fn.ttl_ms, self.sweep_every_s)
        ).with_output_types(
            # a deterministic key coder for state; the rows go as rows (RowCoder), not pickled
            beam.typehints.KV[str, FeatureRecord]
        )
        out = keyed | "Step" >> beam.ParDo(self.fn).with_output_types(
            contract.Detection
        ).with_outputs(DEAD_LETTER, main=DETECTIONS)
        return dict(typed_outputs(out, main=DETECTIONS))
