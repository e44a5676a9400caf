"""The per-frame update of a stream's continual state, one stream or many streams at a time.

Plain logic, no Beam: :class:`StreamStepper` turns ``(stored bytes, frame)`` into ``(stored
bytes, result)``. The stateful DoFns (:mod:`costream.transforms.inference`,
:mod:`costream.transforms.batching`) only read and write the bytes and emit the results, so
this module is where duplicates, gaps, resets and stream epochs are decided.

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
  100 fps): also a new epoch.
* ``last + 1 < i <= last + max_jump``: a gap, handled by the gap policy.

Gap policies, when frame ``i`` follows ``last`` with ``i > last + 1``:

* ``fill`` (the default): feed the last frame's features for each missing index
  (sample-and-hold), then the new frame; a gap longer than ``max_fill`` frames (default
  :data:`DEFAULT_MAX_FILL`) resets instead (filling a long outage would fabricate a whole
  window). A frame that was dead-lettered (a corrupt JPEG, NaN features) leaves a one-frame gap,
  so by default it costs no warm-up: its slot in the window holds the previous frame.
* ``reset``: forget the stream's past; the next ``n - 1`` detections are warm-up again.

Every decision above reads only a stream's metadata (model, last index, last capture time,
last-seen time), never the model's output. :meth:`StreamStepper.plan` makes it, and the model
work follows: :meth:`StreamStepper.process` steps one stream (B = 1), here;
:meth:`StreamStepper.process_many` (:mod:`costream.transforms.many_streams`) plans every frame
of many streams first and then steps all streams that have a step to take as one B-row step,
round by round (a stream with two frames, or with gap fills, takes part in as many rounds).
Both give the same detections, within float32 rounding (a B-row matrix product sums in another
order than a one-row product).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from costream.connectors import contract
from costream.models.protocol import ContinualModel
from costream.models.state import StateFormatError, StreamState
from costream.transforms.steps import (
    DEFAULT_GAP_POLICY,
    DEFAULT_MAX_FILL,
    DEFAULT_MAX_JUMP,
    GAP_POLICIES,
    RESET_EVENTS,
    STATE_DTYPES,
    UNREADABLE,
    Frame,
    GapPolicy,
    Plan,
    StepResult,
    check_gap_policy,
    check_state_dtype,
)
from costream.transforms.stored import Stored

log = logging.getLogger(__name__)

__all__ = [  # the vocabulary of costream.transforms.steps, re-exported, and the stepper
    "DEFAULT_GAP_POLICY",
    "DEFAULT_MAX_FILL",
    "DEFAULT_MAX_JUMP",
    "GAP_POLICIES",
    "RESET_EVENTS",
    "STATE_DTYPES",
    "UNREADABLE",
    "Frame",
    "GapPolicy",
    "Plan",
    "StepResult",
    "StreamStepper",
    "check_gap_policy",
    "check_state_dtype",
    "iter_detections",
    "load_stepper",
]


class StreamStepper:
    """Per-frame update of one stream's continual state, or of many streams at once.

    Args:
        model: a continual model (:class:`~costream.models.protocol.ContinualModel`, e.g.
            :class:`~costream.models.online.ContinualOnlineTransformer`).
        model_id: ``name@sha256-prefix``; a stream whose stored state names another model is reset.
        labels: the C class names.
        gap_policy: ``fill`` or ``reset`` (module docstring).
        max_fill: longest gap ``fill`` bridges (default :data:`DEFAULT_MAX_FILL`, at most n).
        ttl_ms: state older than this (wall time since the stream's last frame) is treated as
            expired and reset; the embedded runner's replacement for the idle timer.
        max_jump: a forward jump of more frames than this is a new stream epoch (module docstring).
        state_dtype: precision of the stored model state (:data:`STATE_DTYPES`); ``float16`` and
            ``bfloat16`` halve the state bytes; every step still runs in float32.
    """

    def __init__(
        self,
        model: ContinualModel,
        model_id: str,
        labels: Sequence[str],
        gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
        max_fill: int | None = None,
        ttl_ms: int | None = None,
        max_jump: int = DEFAULT_MAX_JUMP,
        state_dtype: str = "float32",
    ) -> None:
        check_gap_policy(gap_policy)
        self.model, self.model_id = model, model_id
        self.labels = tuple(map(str, labels))  # one tuple: make_detection takes it as it is
        self.gap_policy = gap_policy
        self.max_fill = min(DEFAULT_MAX_FILL, model.window) if max_fill is None else int(max_fill)
        self.ttl_ms = ttl_ms
        self.max_jump = int(max_jump)
        self.d_in = int(model.config.d_in)
        self.state_dtype = state_dtype
        self._store_dtype = check_state_dtype(state_dtype)
        try:  # the model's precision: inputs and loaded states are brought to it
            self.dtype = next(model.parameters()).dtype
        except StopIteration:  # a model without parameters computes in float32
            self.dtype = torch.float32

    # -- decisions -------------------------------------------------------------------------------
    def check_features(self, features: np.ndarray) -> np.ndarray:
        """The frame's features as float32 (D_in,); ``ValueError`` if wrong-sized or not finite."""
        x = np.asarray(features, dtype=np.float32).reshape(-1)
        if x.shape[0] != self.d_in:
            raise ValueError(f"Features have {x.shape[0]} values; the model expects {self.d_in}.")
        if not np.isfinite(x).all():
            raise ValueError(
                "Features contain NaN or infinite values; they would poison the stream's state."
            )
        return x

    def check_rows(self, features: Sequence[np.ndarray]) -> list[np.ndarray | ValueError]:
        """:meth:`check_features` of many frames: each row as float32 (D_in,), or its error.

        One stacked copy and one finiteness test for all rows when they are float32 vectors
        of the model's width (the usual case); otherwise, and for the rows that fail, the
        per-row :meth:`check_features`, so the rows and errors are exactly its own.
        """
        try:
            m = np.stack(features) if len(features) else None
        except (ValueError, TypeError):  # rows of different shapes, or not arrays at all
            m = None
        # float32 after stacking: every row was float32, or exactly castable to it
        if m is None or m.dtype != np.float32 or m.ndim != 2 or m.shape[1] != self.d_in:
            return [self._checked(f) for f in features]
        ok = np.isfinite(m).all(axis=1).tolist()
        return [row if good else self._checked(f) for row, good, f in zip(m, ok, features)]

    def _checked(self, features: np.ndarray) -> np.ndarray | ValueError:
        try:
            return self.check_features(features)
        except ValueError as e:
            return e

    @staticmethod
    def read_cell(stream_id: str, blob: bytes | memoryview | None) -> tuple[Stored | None, bool]:
        """A stream's stored cell, and whether it was unreadable (then None: start again)."""
        if not blob:
            return None, False
        try:
            return Stored.from_bytes(blob), False
        except StateFormatError as e:
            log.warning(
                "stream %s: stored state unreadable, the stream starts again: %s", stream_id, e
            )
            return None, True

    def plan(self, prev: Stored | None, frame_index: int, ts_ms: int, now_ms: int) -> Plan:
        """What frame ``frame_index`` (captured at ``ts_ms``) does to a stream whose cell is ``prev``."""
        events: list[str] = []
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
                return Plan(["duplicate"], duplicate=True)
            events.append("reboot")  # counting from 0 again, with newer capture times
            prev = None
        elif prev is not None and frame_index - prev.last_index > self.max_jump:
            events.append("jump")
            prev = None
        if prev is None:
            return Plan(events, fresh=True)
        ts = prev.last_ts_ms
        if frame_index == prev.last_index + 1:
            return Plan(events, prev_ts_ms=ts)
        events.append("gap")
        missing = frame_index - prev.last_index - 1
        if self.gap_policy == "fill" and missing <= self.max_fill:
            events.append("gap_fill")
            fills = range(prev.last_index + 1, frame_index)
            return Plan(events, fills=fills, hold=prev.last_features, prev_ts_ms=ts)
        events.append("gap_reset")
        return Plan(events, fresh=True, prev_ts_ms=ts)

    def _next_stored(self, plan: Plan, frame_index: int, ts_ms: int, now_ms: int, x) -> Stored:
        """The stream's cell after a stepped frame, its model state still to be filled in."""
        last_ts = ts_ms if plan.prev_ts_ms is None else max(ts_ms, plan.prev_ts_ms)
        return Stored(self.model_id, frame_index, now_ms, x, None, last_ts)

    # -- state bytes -----------------------------------------------------------------------------
    def load_state(self, state: StreamState) -> StreamState:
        """A stored model state, in the model's precision whatever it was stored in."""
        return state.to_float(self.dtype)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        return t if self.dtype is torch.float32 else t.to(self.dtype)

    def dump_state(self, state: StreamState) -> StreamState:
        """The model state as it is stored: its floating tensors in ``state_dtype``."""
        if self._store_dtype is torch.float32:  # as computed (float32, or a float64 model)
            return state
        return state.to_float(self._store_dtype)

    def _detection(self, stream_id: str, frame_index: int, ts_ms: int, probs, warm, arrival_ms):
        latency = 0.0 if arrival_ms is None else max(0.0, time.time() * 1000 - arrival_ms)
        return contract.make_detection(
            stream_id,
            frame_index,
            ts_ms,
            probs,
            self.labels,
            warm=bool(warm),
            model=self.model_id,
            latency_ms=latency,
        )

    # -- one stream ------------------------------------------------------------------------------
    def process(
        self,
        stored: bytes | memoryview | None,
        stream_id: str,
        frame_index: int,
        ts_ms: int,
        features: np.ndarray,
        *,
        now_ms: int | None = None,
        arrival_ms: float | None = None,
    ) -> tuple[bytes | None, StepResult]:
        """Apply one frame. Returns the bytes to store (``None``: keep what is stored) and the result.

        A stored cell that cannot be read restarts the stream with this frame (event
        :data:`UNREADABLE`).

        Raises:
            ValueError: the features have the wrong size or are not finite; the stream's stored
                state is untouched and the caller dead-letters the frame.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        x = self.check_features(features)
        t0 = time.perf_counter_ns()
        prev, unreadable = self.read_cell(stream_id, stored)
        plan = self.plan(prev, frame_index, ts_ms, now_ms)
        if unreadable:
            plan.events.insert(0, UNREADABLE)
        if plan.duplicate:
            return None, StepResult(None, plan.events, decode_us=_us(t0))
        if plan.fresh or prev is None or prev.state is None:
            state = self.model.init_state(1)
        else:
            state = self.load_state(prev.state)
        t1 = time.perf_counter_ns()
        if plan.fills and plan.hold is not None:
            hold = self._tensor(plan.hold).unsqueeze(0)
            for i in plan.fills:
                _, state = self.model.step(hold, state, torch.tensor([i]))
        index = torch.tensor([frame_index])  # the phase comes from the frame, not the state
        out, state = self.model.step(self._tensor(x).unsqueeze(0), state, index)
        probs = torch.softmax(out.scores[0].double(), dim=-1).tolist()
        t2 = time.perf_counter_ns()
        det = self._detection(stream_id, frame_index, ts_ms, probs, out.warm[0], arrival_ms)
        t3 = time.perf_counter_ns()
        cell = self._next_stored(plan, frame_index, ts_ms, now_ms, x)
        cell.state = self.dump_state(state)
        blob = cell.to_bytes()
        return blob, StepResult(
            det,
            plan.events,
            len(blob),
            decode_us=(t1 - t0) / 1e3,
            model_us=(t2 - t1) / 1e3,
            encode_us=_us(t3),
        )

    # -- many streams (costream.transforms.many_streams) -----------------------------------------
    def process_many(
        self,
        stored: Mapping[str, bytes | memoryview],
        frames: Sequence[Frame],
        *,
        now_ms: int | None = None,
        max_rows: int | None = None,
    ) -> tuple[dict[str, bytes], list[StepResult]]:
        """Apply frames of many streams, in order per stream, stepping streams together.

        ``stored``: stream id -> its cell (streams without one start fresh); ``max_rows``: the
        most rows of one model step. Returns the cells that changed (stream id -> new bytes)
        and one :class:`StepResult` per frame, in the order of ``frames``
        (:func:`costream.transforms.many_streams.process_many`).
        """
        from costream.transforms import many_streams

        return many_streams.process_many(self, stored, frames, now_ms=now_ms, max_rows=max_rows)

    def process_each(
        self,
        stored: Mapping[str, bytes | memoryview],
        frames: Sequence[Frame],
        *,
        now_ms: int | None = None,
    ) -> tuple[dict[str, bytes], list[StepResult]]:
        """:meth:`process_many` frame by frame with :meth:`process`, with B = 1 steps.

        The same contract; a frame whose update fails in any way is refused alone (``error``)
        (:func:`costream.transforms.many_streams.process_each`).
        """
        from costream.transforms import many_streams

        return many_streams.process_each(self, stored, frames, now_ms=now_ms)


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


_STEPPERS: dict[tuple, StreamStepper] = {}
_STEPPERS_LOCK = threading.Lock()


def load_stepper(
    weights: str,
    gap_policy: GapPolicy = DEFAULT_GAP_POLICY,
    max_fill: int | None = None,
    ttl_ms: int | None = None,
    max_jump: int = DEFAULT_MAX_JUMP,
    state_dtype: str = "float32",
) -> StreamStepper:
    """The continual model of a weights file, wrapped in a stepper; loaded once per process."""
    key = (str(weights), gap_policy, max_fill, ttl_ms, max_jump, state_dtype)
    with _STEPPERS_LOCK:
        if key not in _STEPPERS:
            from costream.models.zoo import load_model

            model, card = load_model(weights, continual=True)
            model_id = f"{card['continual_name']}@{card['sha256'][:12]}"
            _STEPPERS[key] = StreamStepper(
                model,
                model_id,
                card["classes"],
                gap_policy,
                max_fill,
                ttl_ms,
                max_jump,
                state_dtype,
            )
        return _STEPPERS[key]
