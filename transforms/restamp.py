"""Give an element its input's event time again after batching, within what Beam allows."""

from __future__ import annotations

from typing import Any

from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

__all__ = ["restamp"]


def restamp(element: Any, original_us: int, batch_ts: Timestamp, window: Any) -> TimestampedValue:
    """Give ``element`` its input's event time again, within what Beam allows.

    Batching stamps a batch with a timer's time, or, for the final flush of a window, with the
    window's *end*, which lies beyond the window's last valid timestamp: downstream grouping then
    drops those elements as late (seen with Beam 2.77's stateful ``BatchElements`` at the end of a
    bounded input). So the timestamp is the input's event time, moved forward to the batch's time
    where that is later (moving back could make it late) and capped at the window's maximum.
    """
    ts = max(Timestamp(micros=original_us), batch_ts)
    return TimestampedValue(element, min(ts, window.max_timestamp()))
