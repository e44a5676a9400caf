"""Stateful continual inference: each stream's continual state lives in Beam keyed state.

:class:`ContinualInference` is the PTransform; it keys frames and steps them with one of two
stateful DoFns, both thin wrappers of :class:`~costream.transforms.stepper.StreamStepper` (the
per-frame decisions: duplicates, gaps, resets, stream epochs):

* :class:`ContinualInferenceFn` (the default): keyed by stream id, one B = 1 step per frame,
  one state read and one write per frame (:class:`~costream.transforms.stored.Stored`);
* :class:`~costream.transforms.batching.BatchedInferenceFn` (``batch_streams=True``): keyed by
  shard, the frames of a shard's streams that are ready together are stepped as one B-row step
  (``docs/batching.md``).

Failures of one frame go to the ``dead_letter`` output and the stream's state stays as it was
before that frame. Replayed frames (header ``costream.replay``) step the state but emit nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from costream.connectors import contract
from costream.connectors.contract import is_replay
from costream.transforms.records import FeatureRecord, as_array, typed_outputs
from costream.transforms.steps import (
    DEFAULT_GAP_POLICY,
    DEFAULT_MAX_JUMP,
    GapPolicy,
    check_gap_policy,
    check_state_dtype,
)
from costream.transforms.stored import Stored
from costream.transforms.streams import SWEEP, InferenceDoFn, KeyFrames

__all__ = [
    "AUTO_DELAY_MS",
    "DEAD_LETTER",
    "DETECTIONS",
    "ContinualInference",
    "ContinualInferenceFn",
    "group_delay_ms",
]

DEAD_LETTER = "dead_letter"
DETECTIONS = "detections"


class ContinualInferenceFn(InferenceDoFn):
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

    def _expire(self, stream_id: str, swept_ms: int, stream: Any) -> None:
        stored = stream.read()
        if not stored:
            return
        ttl = self.ttl_ms
        last_seen = Stored.from_bytes(stored).last_seen_ms
        if ttl is not None and swept_ms - last_seen > ttl:
            stream.clear()
            self.metrics.idle_cleared.inc()
        elif self._streams is not None:  # a frame came in since: still held
            self._streams.seen(stream_id, last_seen, len(stored))

    def process(
        self,
        element: tuple[str, Any],
        stream=beam.DoFn.StateParam(STREAM),
        idle=beam.DoFn.TimerParam(IDLE),
    ) -> Iterator[Any]:
        stream_id, rec = element
        if rec.frame_index == SWEEP:
            self._expire(stream_id, rec.ts_ms, stream)
            return
        self.one_thread()
        m = self.metrics
        replay = is_replay(rec.headers)
        (m.replayed if replay else m.frames_in).inc()
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
            if not replay:  # a replayed frame's dead letter was written before the restart
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, m.dead_letter(rec, e))
            return
        if not replay:
            m.count(stream_id, rec.frame_index, result.events)
        if blob is not None:
            t2 = time.perf_counter_ns()
            stream.write(blob)
            m.write_us.update(round((time.perf_counter_ns() - t2) / 1e3))
            m.model_us.update(round(result.model_us))
            m.state_size.update(result.state_bytes)
            if self._streams is not None:
                self._streams.seen(stream_id, int(time.time() * 1000), len(blob))
        if self.idle_timer and self.idle_timeout_s is not None:
            idle.set(Timestamp.now() + Duration(seconds=self.idle_timeout_s))
        m.read_us.update(round((t1 - t0) / 1e3))
        m.serde_us.update(round(result.decode_us + result.encode_us))
        det = result.detection
        if det is not None and not replay:
            m.emitted(det)
            m.frame_us.update(round((time.perf_counter_ns() - t0) / 1e3))
            yield det
        else:
            m.frame_us.update(round((time.perf_counter_ns() - t0) / 1e3))

    @on_timer(IDLE)
    def on_idle(self, stream=beam.DoFn.StateParam(STREAM)) -> None:
        stream.clear()
        with self.metrics.hold.during():  # counted in finish_bundle (counters.Hold)
            self.metrics.idle_cleared.inc()


AUTO_DELAY_MS = 20.0
"""``max_delay_ms: auto`` on a distributed runner (Flink)."""


def group_delay_ms(max_delay_ms: float | str | None, in_process: bool) -> float | None:
    """The delay that cuts batched groups: ``max_delay_ms``, with ``auto`` settled per runner.

    ``auto`` on a distributed runner (Flink) is :data:`AUTO_DELAY_MS`. In process it is None
    (groups are the reader's bundles): there the step is fused with the reader, whose bundle
    holds its partitions one after the other and ends once it has caught up with the broker;
    so under live traffic a bundle holds what arrived since the previous one (a short wait),
    and under a backlog, where a frame has waited in Kafka far longer than any cut would save,
    every round of the group steps all of the shard's streams.
    """
    if max_delay_ms == "auto":
        return None if in_process else AUTO_DELAY_MS
    return None if max_delay_ms is None else float(max_delay_ms)


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
        batch_streams: bool = False,
        shards: int = 16,
        max_batch: int = 64,
        max_delay_ms: float | str | None = "auto",
        state_dtype: str = "float32",
    ) -> None:
        super().__init__()
        check_gap_policy(gap_policy)
        check_state_dtype(state_dtype)
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(
                f"idle_timeout_s must be positive seconds (or null to keep state forever), got {idle_timeout_s}."
            )
        if max_fill is not None and max_fill < 0:
            raise ValueError(f"max_fill must be >= 0 frames, got {max_fill}.")
        if max_jump < 1:
            raise ValueError(f"max_jump must be >= 1 frame, got {max_jump}.")
        if batch_streams and shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}.")
        if batch_streams and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 frame, got {max_batch}.")
        if isinstance(max_delay_ms, str) and max_delay_ms != "auto":
            raise ValueError(f"max_delay_ms must be ms, 'auto' or null, got {max_delay_ms!r}.")
        if batch_streams and not isinstance(max_delay_ms, str | None) and max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms}.")
        self.shards = shards if batch_streams else None
        self.max_batch, self.max_delay_ms = max_batch, max_delay_ms
        common = (weights, gap_policy, max_fill, idle_timeout_s, idle_timer, max_jump)
        self.fn: InferenceDoFn
        if batch_streams:
            from costream.transforms.batching import BatchedInferenceFn

            self.fn = BatchedInferenceFn(*common, state_dtype=state_dtype, max_rows=max_batch)
        else:
            self.fn = ContinualInferenceFn(*common, state_dtype=state_dtype)
        self.sweep_every_s = 1.0  # seconds between idle sweeps where a TTL replaces the timer

    def expand(self, frames: beam.PCollection) -> dict[str, beam.PCollection]:
        from costream.transforms.beam_fixes import apply, in_process

        here = in_process(frames.pipeline)
        if here:
            apply()  # Beam's worker patches, before the runner builds its bundle processors
        keys = (self.fn.registry, self.fn.ttl_ms, self.sweep_every_s)
        keyed: beam.PCollection
        if self.shards is None:
            keyed = frames | "KeyByStream" >> beam.ParDo(KeyFrames(*keys)).with_output_types(
                # a deterministic key coder for state; the rows go as rows (RowCoder), not pickled
                beam.typehints.KV[str, FeatureRecord]
            )
        else:
            from costream.transforms.batching import GroupFrames

            # in process a group cut by size holds one partition's streams (the reader's bundle
            # holds its partitions one after the other): there a group is what arrives within
            # max_delay_ms (None: the bundle's frames), stepped max_batch rows at a time
            size = None if here else self.max_batch
            delay = group_delay_ms(self.max_delay_ms, here)
            # the label of the one-stream path's keying step: Flink maps a savepoint's state to
            # operators by their names, and this step is fused with the reader's
            keyed = frames | "KeyByStream" >> beam.ParDo(
                GroupFrames(*keys, self.shards, max_batch=size, max_delay_ms=delay)
            ).with_output_types(beam.typehints.KV[str, beam.typehints.List[FeatureRecord]])
        out = keyed | "Step" >> beam.ParDo(self.fn).with_output_types(
            contract.Detection
        ).with_outputs(DEAD_LETTER, main=DETECTIONS)
        return dict(typed_outputs(out, main=DETECTIONS))
