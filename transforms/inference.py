"""Stateful continual inference: each stream's continual state lives in Beam keyed state.

Two layers, as STYLE.md asks:

* :class:`StreamStepper` is the plain per-frame update, ``(stored bytes, frame) -> (stored bytes,
  result)``, unit-tested without Beam: duplicate detection, the gap policy, model-change and TTL
  resets, the model step, and the detection record.
* :class:`ContinualInferenceFn` is the thin stateful DoFn: read the stream's bytes, call the
  stepper, write the bytes, emit; failures of one frame go to the ``dead_letter`` output and the
  stream's state stays as it was before that frame.

What one stream stores (one state cell, one read and one write per frame), see :class:`Stored`:
the model identity (``name@sha256[:12]``), the last frame index, the last-seen wall time (TTL),
the last features (for the ``fill`` gap policy) and the model's one-row state
(``StreamState.to_bytes``: raw tensors, no pickle).

Gap policies, when frame ``i`` follows ``last`` with ``i > last + 1``:

* ``reset``: forget the stream's past; the next ``n - 1`` detections are warm-up again.
* ``fill``: feed the last frame's features for each missing index (sample-and-hold), then the new
  frame; a gap longer than ``max_fill`` frames resets instead (filling a long outage would
  fabricate a whole window).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
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
from costream.connectors import codecs
from costream.models.state import StateFormatError, StreamState

__all__ = [
    "ContinualInference",
    "ContinualInferenceFn",
    "GapPolicy",
    "StepResult",
    "Stored",
    "StreamStepper",
    "iter_detections",
    "load_stepper",
]

log = logging.getLogger(__name__)

GapPolicy = Literal["reset", "fill"]
GAP_POLICIES = ("reset", "fill")


def _check_gap_policy(gap_policy: str) -> None:
    if gap_policy not in GAP_POLICIES:
        raise ValueError(
            f"gap_policy must be one of {', '.join(GAP_POLICIES)}, got {gap_policy!r}."
        )


_MAGIC = b"CoSS"
_VERSION = 1
_PREFIX = struct.Struct("<4sHII")  # magic, version, meta length, features length


@dataclass
class Stored:
    """What one stream keeps between frames (serialised to one bytes cell)."""

    model: str
    last_index: int
    last_seen_ms: int
    last_features: np.ndarray  # float32 (D_in,)
    state: bytes  # StreamState.to_bytes() of the stream's row

    def to_bytes(self) -> bytes:
        """Compact bytes: header, JSON meta, raw float32 features, the model state blob."""
        meta = json.dumps(
            {"model": self.model, "last_index": self.last_index, "last_seen_ms": self.last_seen_ms},
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
        if magic != _MAGIC or version != _VERSION:
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

    detection: codecs.Detection | None
    events: list[str] = field(
        default_factory=list
    )  # duplicate, gap, gap_reset, gap_fill, model_change, expired
    state_bytes: int = 0
    decode_us: float = 0.0
    model_us: float = 0.0
    encode_us: float = 0.0


class StreamStepper:
    """Per-frame update of one stream's continual state (plain logic, no Beam).

    Args:
        model: a continual model with ``init_state(1)``, ``step(x (1, D_in), state) ->
            (out with .scores (1, C) and .warm (1,), state)``, ``config.d_in`` and ``window``.
        model_id: ``name@sha256-prefix``; a stream whose stored state names another model is reset.
        labels: the C class names.
        gap_policy: ``reset`` or ``fill`` (module docstring).
        max_fill: longest gap ``fill`` bridges (default: the window n).
        ttl_ms: state older than this (wall time since the stream's last frame) is treated as
            expired and reset; the embedded runner's replacement for the idle timer.
    """

    def __init__(
        self,
        model: Any,
        model_id: str,
        labels: Sequence[str],
        gap_policy: GapPolicy = "reset",
        max_fill: int | None = None,
        ttl_ms: int | None = None,
    ) -> None:
        _check_gap_policy(gap_policy)
        self.model, self.model_id, self.labels = model, model_id, list(labels)
        self.gap_policy = gap_policy
        self.max_fill = model.window if max_fill is None else int(max_fill)
        self.ttl_ms = ttl_ms
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
            return None, StepResult(None, ["duplicate"], decode_us=_us(t0))

        state = self.model.init_state(1) if prev is None else StreamState.from_bytes(prev.state)
        t1 = time.perf_counter_ns()
        if prev is not None and frame_index > prev.last_index + 1:
            missing = frame_index - prev.last_index - 1
            events.append("gap")
            if self.gap_policy == "fill" and missing <= self.max_fill:
                events.append("gap_fill")
                hold = torch.from_numpy(prev.last_features).unsqueeze(0)
                for _ in range(missing):
                    _, state = self.model.step(hold, state)
            else:
                events.append("gap_reset")
                state = self.model.init_state(1)

        out, state = self.model.step(torch.from_numpy(x).unsqueeze(0), state)
        probs = torch.softmax(out.scores[0].double(), dim=-1).tolist()
        t2 = time.perf_counter_ns()
        latency = 0.0 if arrival_ms is None else max(0.0, time.time() * 1000 - arrival_ms)
        det = codecs.make_detection(
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
        blob = Stored(self.model_id, frame_index, now_ms, x, state.to_bytes()).to_bytes()
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
) -> Iterator[codecs.Detection]:
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
    gap_policy: GapPolicy = "reset",
    max_fill: int | None = None,
    ttl_ms: int | None = None,
) -> StreamStepper:
    """The continual model of a weights file, wrapped in a stepper; loaded once per process."""
    key = (str(weights), gap_policy, max_fill, ttl_ms)
    with _STEPPERS_LOCK:
        if key not in _STEPPERS:
            from costream.models.zoo import load_model

            model, card = load_model(weights, continual=True)
            model_id = f"{card['continual_name']}@{card['sha256'][:12]}"
            _STEPPERS[key] = StreamStepper(
                model, model_id, card["classes"], gap_policy, max_fill, ttl_ms
            )
        return _STEPPERS[key]


class ContinualInferenceFn(beam.DoFn):
    """Stateful DoFn keyed by stream id: one continual step per frame, state in Beam state.

    Input: ``(stream_id, record)`` where ``record`` has ``stream_id, frame_index, ts_ms,
    features, arrival_ms`` and the original ``key, value, headers`` (for dead letters).
    Main output: detection records (``OutgoingRecord``: key = stream id, DESIGN.md JSON value).
    Tagged output ``dead_letter``: the original record with ``costream.stage = inference``.

    ``idle_timeout_s``: on runners with real processing-time timers (Flink) an idle timer clears a
    stream's state after that long without frames (``idle_timer=True``). The embedded FnApiRunner
    fires processing-time timers right after the bundle that set them, which would wipe state
    every frame, so there ``idle_timer=False`` and the same timeout is enforced as a TTL checked
    when the next frame arrives.

    Per-frame time split (Beam distributions in namespace ``costream``, integer microseconds, one
    update per frame that was not dead-lettered; issue 6): ``state_read_us`` (``stream.read()``),
    ``serde_us`` (state bytes decoded and encoded, :class:`StepResult`), ``model_us`` (the step
    and softmax; frames that stepped), ``state_write_us`` (``stream.write()``; frames that
    stepped) and ``frame_us`` (the whole call up to the emitted record, so the remainder is
    validation, building the detection and its JSON). On the FnApiRunner and other portable
    runners a write only buffers: the bytes reach the runner when the bundle commits, outside
    these timings; a read fetches from the runner (or its cache) once per stream and bundle.
    """

    STREAM = ReadModifyWriteStateSpec("stream", BytesCoder())
    IDLE = TimerSpec("idle", TimeDomain.REAL_TIME)

    def __init__(
        self,
        weights: str,
        gap_policy: GapPolicy = "reset",
        max_fill: int | None = None,
        idle_timeout_s: float | None = 600.0,
        idle_timer: bool = True,
    ) -> None:
        self.weights, self.gap_policy, self.max_fill = weights, gap_policy, max_fill
        self.idle_timeout_s, self.idle_timer = idle_timeout_s, idle_timer
        m = "costream"
        self.frames_in = Metrics.counter(m, "frames_in")
        self.detections = Metrics.counter(m, "detections_out")
        self.warmup = Metrics.counter(m, "warmup_frames")
        self.duplicates = Metrics.counter(m, "duplicates")
        self.gaps = Metrics.counter(m, "gaps")
        self.resets = Metrics.counter(m, "state_resets")
        self.dead = Metrics.counter(m, "dead_letters")
        self.idle_cleared = Metrics.counter(m, "idle_cleared")
        self.latency = Metrics.distribution(m, "latency_ms")
        self.state_size = Metrics.distribution(m, "state_bytes")
        self.read_us = Metrics.distribution(m, "state_read_us")
        self.write_us = Metrics.distribution(m, "state_write_us")
        self.serde_us = Metrics.distribution(m, "serde_us")
        self.model_us = Metrics.distribution(m, "model_us")
        self.frame_us = Metrics.distribution(m, "frame_us")

    def setup(self) -> None:
        torch.set_num_threads(1)  # one step is small; thread wake-ups dominate (p99 1.7 s -> 31 ms)
        ttl = None
        if self.idle_timeout_s is not None and not self.idle_timer:
            ttl = int(self.idle_timeout_s * 1000)
        self.stepper = load_stepper(self.weights, self.gap_policy, self.max_fill, ttl)

    def process(
        self,
        element: tuple[str, Any],
        stream=beam.DoFn.StateParam(STREAM),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        stream_id, rec = element
        self.frames_in.inc()
        t0 = time.perf_counter_ns()
        stored = stream.read()
        t1 = time.perf_counter_ns()
        try:
            blob, result = self.stepper.process(
                stored,
                stream_id,
                rec.frame_index,
                rec.ts_ms,
                rec.features,
                arrival_ms=rec.arrival_ms,
            )
        except Exception as e:  # one bad frame must not stop the stream or the pipeline
            self.dead.inc()
            log.warning("stream %s frame %s -> dead letter: %s", stream_id, rec.frame_index, e)
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                codecs.dead_letter_record(rec.key, rec.value, rec.headers, e, "inference"),
            )
            return
        for event in result.events:
            if event == "duplicate":
                self.duplicates.inc()
            elif event == "gap":
                self.gaps.inc()
            elif event in ("gap_reset", "model_change", "expired"):
                self.resets.inc()
        if blob is not None:
            t2 = time.perf_counter_ns()
            stream.write(blob)
            self.write_us.update(round(_us(t2)))
            self.model_us.update(round(result.model_us))
            self.state_size.update(result.state_bytes)
        if self.idle_timer and self.idle_timeout_s is not None:
            idle.set(Timestamp.now() + Duration(seconds=self.idle_timeout_s))
        self.read_us.update(round((t1 - t0) / 1e3))
        self.serde_us.update(round(result.decode_us + result.encode_us))
        det = result.detection
        if det is None:
            self.frame_us.update(round(_us(t0)))
            return
        if not det.warm:
            self.warmup.inc()
        self.detections.inc()
        self.latency.update(int(det.latency_ms))
        out = codecs.detection_record(det)
        self.frame_us.update(round(_us(t0)))
        yield out

    @on_timer(IDLE)
    def on_idle(self, stream=beam.DoFn.StateParam(STREAM)) -> None:
        stream.clear()
        self.idle_cleared.inc()


class ContinualInference(beam.PTransform):
    """Frames' features -> per-frame detections, each stream's continual state in keyed state.

    Returns a dict of PCollections: ``detections`` (OutgoingRecord for the output topic) and
    ``dead_letter`` (OutgoingRecord for the dead-letter topic).

    Example (YAML)::

        - type: ContinualInference
          input: ExtractFeatures
          config: {weights: pipelines/assets/demo_model.safetensors, gap_policy: reset}
    """

    def __init__(
        self,
        weights: str,
        gap_policy: GapPolicy = "reset",
        max_fill: int | None = None,
        idle_timeout_s: float | None = 600.0,
        idle_timer: bool = True,
    ) -> None:
        super().__init__()
        _check_gap_policy(gap_policy)
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(
                f"idle_timeout_s must be positive seconds (or null to keep state forever), got {idle_timeout_s}."
            )
        self.fn = ContinualInferenceFn(weights, gap_policy, max_fill, idle_timeout_s, idle_timer)

    def expand(self, frames: beam.PCollection) -> dict[str, beam.PCollection]:
        keyed = frames | "KeyByStream" >> beam.Map(lambda r: (r.stream_id, r)).with_output_types(
            beam.typehints.KV[str, beam.typehints.Any]  # deterministic key coder for state
        )
        out = keyed | "Step" >> beam.ParDo(self.fn).with_outputs(DEAD_LETTER, main=DETECTIONS)
        return {DETECTIONS: out[DETECTIONS], DEAD_LETTER: out[DEAD_LETTER]}
