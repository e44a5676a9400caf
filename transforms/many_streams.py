"""Many streams at a time: the frames of many streams stepped as one B-row model step.

Plain logic, no Beam, for :class:`~costream.transforms.batching.BatchedInferenceFn`'s flushes
(through :meth:`StreamStepper.process_many <costream.transforms.stepper.StreamStepper.process_many>`
and :meth:`~costream.transforms.stepper.StreamStepper.process_each`). The decisions stay the
stepper's: :func:`process_many` first plans every frame of every stream with
:meth:`~costream.transforms.stepper.StreamStepper.plan`, in order per stream, from the streams'
metadata alone, and then steps all streams that have a step to take as one B-row step, round by
round (a stream with two frames, or with gap fills, takes part in as many rounds).
:func:`process_each` is the same contract with one-stream steps (B = 1), frame by frame.

Both give the detections of :meth:`~costream.transforms.stepper.StreamStepper.process`, within
float32 rounding (a B-row matrix product sums in another order than a one-row product).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from costream.models.state import StateFormatError, StreamState
from costream.transforms.steps import UNREADABLE, Frame, StepResult
from costream.transforms.stored import Stored

if TYPE_CHECKING:
    from costream.transforms.stepper import StreamStepper

__all__ = ["process_each", "process_many"]

Op = tuple[bool, np.ndarray, int, int]
"""One pending step of a stream: (start fresh, features, frame index, frame position or -1)."""


def process_many(
    stepper: StreamStepper,
    stored: Mapping[str, bytes | memoryview],
    frames: Sequence[Frame],
    *,
    now_ms: int | None = None,
    max_rows: int | None = None,
) -> tuple[dict[str, bytes], list[StepResult]]:
    """Apply frames of many streams, in order per stream, stepping streams together.

    ``stored``: stream id -> its cell (streams without one start fresh); ``max_rows``: the most
    rows of one model step (a round of more streams is stepped in parts; None: no limit).
    Each round's detections are built as soon as its step is done (their ``latency_ms``
    counts up to their own round, not to the last one). Returns the cells
    that changed (stream id -> new bytes) and one :class:`StepResult` per frame, in the
    order of ``frames``: a detection, a duplicate (``detection`` None, no ``error``) or a
    refused frame (``error`` set; the stream's state is as before that frame, and the
    stream's later frames still step). A stream whose stored cell cannot be read starts again
    with its first frame here (event ``state_unreadable``), as ``StreamStepper.process`` does.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    t0 = time.perf_counter_ns()
    results, cells, orig, ops = _plan_frames(stepper, stored, frames, now_ms)
    order = list(ops)  # the batch's rows, one per stream that steps
    t1 = time.perf_counter_ns()
    if not order:
        return {}, results
    try:
        state = _first_state(stepper, order, orig, ops)
    except StateFormatError:  # a model state that cannot be read: settle it stream by stream
        return stepper.process_each(stored, frames, now_ms=now_ms)
    t2 = time.perf_counter_ns()
    state, detect_ns = _step_rounds(stepper, state, order, ops, frames, results, max_rows)
    t3 = time.perf_counter_ns()
    changed: dict[str, bytes] = {}
    for b, sid in enumerate(order):
        cell = cells[sid]
        assert cell is not None
        cell.state = stepper.dump_state(state.view(b))
        changed[sid] = cell.to_bytes()
    t4 = time.perf_counter_ns()
    n = max(1, len(frames))
    decode_us = ((t1 - t0) + (t2 - t1)) / 1e3 / n
    model_us = (t3 - t2 - detect_ns) / 1e3 / n
    encode_us = (t4 - t3 + detect_ns) / 1e3 / n  # detections built, state bytes written
    for pos, res in enumerate(results):
        res.decode_us, res.model_us, res.encode_us = decode_us, model_us, encode_us
        if res.detection is not None:
            res.state_bytes = len(changed[frames[pos].stream_id])
    return changed, results


def _plan_frames(
    stepper: StreamStepper,
    stored: Mapping[str, bytes | memoryview],
    frames: Sequence[Frame],
    now_ms: int,
) -> tuple[
    list[StepResult],
    dict[str, Stored | None],
    dict[str, Stored | None],
    dict[str, list[Op]],
]:
    """Plan every frame: its result so far, each stream's cell after it, the steps to take.

    Returns the results (one per frame, detections still to come), the streams' cells as the
    plan leaves them, the cells as stored, and per stream that steps its pending steps in order.
    """
    results: list[StepResult] = []  # one per frame, in order
    cells: dict[str, Stored | None] = {}  # the stream's cell as the plan goes
    orig: dict[str, Stored | None] = {}  # the stream's cell as stored
    unreadable: set[str] = set()  # streams whose stored cell could not be read
    ops: dict[str, list[Op]] = {}  # fresh, x, index, pos (-1)
    rows = stepper.check_rows([f.features for f in frames])
    for pos, f in enumerate(frames):
        sid = f.stream_id
        if sid not in cells:
            cells[sid], broken = stepper.read_cell(sid, stored.get(sid))
            orig[sid] = cells[sid]
            if broken:
                unreadable.add(sid)
        x = rows[pos]
        if isinstance(x, ValueError):
            results.append(StepResult(None, error=x))
            continue
        prev = cells[sid]
        plan = stepper.plan(prev, f.frame_index, f.ts_ms, now_ms)
        if sid in unreadable:  # the stream's first frame that steps starts it again
            unreadable.discard(sid)
            plan.events.insert(0, UNREADABLE)
        if plan.duplicate:
            results.append(StepResult(None, plan.events))
            continue
        todo = ops.setdefault(sid, [])
        fresh = plan.fresh
        for i in plan.fills:
            todo.append((fresh, plan.hold, i, -1))  # type: ignore[arg-type]
            fresh = False
        todo.append((fresh, x, f.frame_index, pos))
        cells[sid] = stepper._next_stored(plan, f.frame_index, f.ts_ms, now_ms, x)
        results.append(StepResult(None, plan.events))
    return results, cells, orig, ops


def _first_state(
    stepper: StreamStepper,
    order: list[str],
    orig: Mapping[str, Stored | None],
    ops: Mapping[str, list[Op]],
) -> StreamState:
    """The B-row state the first round starts from (``StateFormatError``: one is unreadable)."""
    rows = []
    for sid in order:
        cell = orig[sid]
        if cell is not None and cell.state is not None and not ops[sid][0][0]:
            rows.append(stepper.load_state(cell.state))  # stored, and not fresh at once
        else:
            rows.append(stepper.model.init_state(1))
    return StreamState.cat(rows) if len(rows) > 1 else rows[0]


def _step_rounds(
    stepper: StreamStepper,
    state: StreamState,
    order: list[str],
    ops: Mapping[str, list[Op]],
    frames: Sequence[Frame],
    results: list[StepResult],
    max_rows: int | None,
) -> tuple[StreamState, int]:
    """Step round r: the r-th pending step of every stream that has one, as one B-row step.

    A round of more than ``max_rows`` streams is stepped ``max_rows`` rows at a time. The
    detections of a step's frames are built right after it, into ``results``. Returns the state
    after the last round and the nanoseconds spent building detections (after the softmax).
    """
    detect_ns = 0
    width = max(len(v) for v in ops.values())
    limit = len(order) if max_rows is None else max(1, int(max_rows))
    for r in range(width):
        rows_r = [b for b, sid in enumerate(order) if len(ops[sid]) > r]
        for lo in range(0, len(rows_r), limit):
            rows = rows_r[lo : lo + limit]
            take = [ops[order[b]][r] for b in rows]
            resets = [b for b, op in zip(rows, take) if op[0]]
            if resets:
                state.reset(resets)
            xs = stepper._tensor(np.stack([op[1] for op in take]))
            index = torch.tensor([op[2] for op in take], dtype=torch.long)
            if len(rows) == len(order):
                out, state = stepper.model.step(xs, state, index)
            else:
                sub = state.select(rows)
                out, sub = stepper.model.step(xs, sub, index)
                state.put(rows, sub)
            keep = [j for j, op in enumerate(take) if op[3] >= 0]
            if not keep:
                continue
            probs = torch.softmax(out.scores[keep].double(), dim=-1).tolist()
            warm = out.warm[keep].tolist()
            t0 = time.perf_counter_ns()
            for jj, j in enumerate(keep):
                pos = take[j][3]
                f = frames[pos]
                results[pos].detection = stepper._detection(
                    f.stream_id, f.frame_index, f.ts_ms, probs[jj], warm[jj], f.arrival_ms
                )
            detect_ns += time.perf_counter_ns() - t0
    return state, detect_ns


def process_each(
    stepper: StreamStepper,
    stored: Mapping[str, bytes | memoryview],
    frames: Sequence[Frame],
    *,
    now_ms: int | None = None,
) -> tuple[dict[str, bytes], list[StepResult]]:
    """:func:`process_many` frame by frame with ``StreamStepper.process``, with B = 1 steps.

    The same contract; a frame whose update fails in any way is refused alone (``error``).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    cells = dict(stored)
    changed: dict[str, bytes] = {}
    results: list[StepResult] = []
    for f in frames:
        try:
            blob, res = stepper.process(
                cells.get(f.stream_id),
                f.stream_id,
                f.frame_index,
                f.ts_ms,
                f.features,
                now_ms=now_ms,
                arrival_ms=f.arrival_ms,
            )
        except Exception as e:  # one frame's failure must not take the others with it
            results.append(StepResult(None, error=e))
            continue
        if blob is not None:
            cells[f.stream_id] = changed[f.stream_id] = blob
        results.append(res)
    return changed, results
