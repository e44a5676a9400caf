"""What a stream's frames can do, in the stepper's words: gap policies, events, per-frame values.

The vocabulary of :class:`~costream.transforms.stepper.StreamStepper` (whose module docstring
says what each frame does to a stream) and of the many-streams step
(:mod:`costream.transforms.many_streams`): the gap policies and their defaults, the state
precisions, the events a frame reports (:data:`RESET_EVENTS`, :data:`UNREADABLE`), and the values
passed between the plan, the model work and the DoFns (:class:`Frame`, :class:`Plan`,
:class:`StepResult`). No model, no Beam. ``costream.transforms.stepper`` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from costream.connectors import contract

__all__ = [
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
    "check_gap_policy",
    "check_state_dtype",
]

GapPolicy = Literal["reset", "fill"]
GAP_POLICIES = ("reset", "fill")
DEFAULT_GAP_POLICY: GapPolicy = "fill"
DEFAULT_MAX_FILL = 8
"""Longest gap (frames) the ``fill`` policy bridges unless ``max_fill`` says otherwise."""
DEFAULT_MAX_JUMP = 2**32
"""A forward jump of more frames than this starts a new stream epoch instead of a gap."""
STATE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Precisions a stream's model state may be stored in (``state_dtype``); steps run in float32."""

UNREADABLE = "state_unreadable"
"""Event of a frame whose stream's stored cell could not be read (damaged, or a format this
version does not know): the stream starts again from the initial state with this frame (logged,
counted as a reset) rather than refusing its frames for as long as the cell stays."""
RESET_EVENTS = ("gap_reset", "model_change", "expired", "reboot", "jump", UNREADABLE)
"""Events after which a stream starts from the initial state."""


def check_gap_policy(gap_policy: str) -> None:
    """Raise ``ValueError`` unless ``gap_policy`` is one of :data:`GAP_POLICIES`."""
    if gap_policy not in GAP_POLICIES:
        raise ValueError(
            f"gap_policy must be one of {', '.join(GAP_POLICIES)}, got {gap_policy!r}."
        )


def check_state_dtype(state_dtype: str) -> torch.dtype:
    """The torch dtype of a ``state_dtype`` name; ``ValueError`` for an unknown one."""
    if state_dtype not in STATE_DTYPES:
        raise ValueError(
            f"state_dtype must be one of {', '.join(STATE_DTYPES)}, got {state_dtype!r}."
        )
    return STATE_DTYPES[state_dtype]


@dataclass
class StepResult:
    """Outcome of one input frame: a detection, ``None`` for a dropped duplicate, or an error.

    The three timings (microseconds) split the stepper's work so the streaming job can report
    where per-frame time goes: ``decode_us`` turns the stored bytes into a model state,
    ``model_us`` is the continual step(s), gap fills included, and the softmax, ``encode_us``
    writes the state bytes. A duplicate has only ``decode_us``. In a batch (``process_many``)
    each frame carries its share of the batch's time.

    ``error``: set (and ``detection`` None) when the frame was refused (wrong size, not
    finite); the caller dead-letters it. Only ``process_many`` returns errors;
    ``process`` raises them.
    """

    detection: contract.Detection | None
    events: list[str] = field(
        default_factory=list
    )  # duplicate, gap, gap_reset, gap_fill, model_change, expired, reboot, jump,
    # state_unreadable
    state_bytes: int = 0
    decode_us: float = 0.0
    model_us: float = 0.0
    encode_us: float = 0.0
    error: Exception | None = None


@dataclass(frozen=True)
class Frame:
    """One input frame for :meth:`StreamStepper.process_many`."""

    stream_id: str
    frame_index: int
    ts_ms: int
    features: np.ndarray
    arrival_ms: float | None = None


@dataclass
class Plan:
    """What a frame does to its stream, decided from the stream's metadata alone.

    ``duplicate``: drop it. Otherwise: start from the initial state if ``fresh``, step the held
    features ``hold`` at each index of ``fills``, then step the frame itself.
    """

    events: list[str]
    duplicate: bool = False
    fresh: bool = False
    fills: range = range(0)
    hold: np.ndarray | None = None
    prev_ts_ms: int | None = None  # the newest capture time seen before, where it still counts
