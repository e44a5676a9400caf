"""The splittable read's restriction and watermark: offset ranges of one partition.

A partition must be read in order by one reader, so its offset range is never split except by
self-checkpoints; its watermark is the newest record timestamp seen, advanced with the wall
clock when the partition is quiet (``idle_partition_s``).
"""

import time
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker, WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from costream.connectors.kafka.offsets import UNBOUNDED, _PartitionDescriptor

__all__: list[str] = []


class _KafkaOffsetTracker(OffsetRestrictionTracker):
    """Offset tracker for one partition: only self-checkpoints (fraction 0) split it.

    A partition must be read in order by one reader, so runner-initiated splits are refused;
    the range may be unbounded (stop = ``sys.maxsize``).
    """

    def try_split(self, fraction_of_remainder: float) -> tuple[OffsetRange, OffsetRange] | None:
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def current_progress(self) -> RestrictionProgress:
        rng = self.current_restriction()
        done = 0 if self._current_position is None else self._current_position - rng.start + 1
        if rng.stop == UNBOUNDED:
            return RestrictionProgress(completed=float(done), remaining=1.0)
        return RestrictionProgress(
            completed=float(done), remaining=float(rng.stop - rng.start - done)
        )

    def is_bounded(self) -> bool:
        return self.current_restriction().stop != UNBOUNDED


class _OffsetRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, element: _PartitionDescriptor) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> RestrictionTracker:
        return _KafkaOffsetTracker(restriction)

    def split(
        self, element: _PartitionDescriptor, restriction: OffsetRange
    ) -> Iterator[OffsetRange]:
        yield restriction  # never split a partition: records must come out in offset order

    def restriction_size(self, element: _PartitionDescriptor, restriction: OffsetRange) -> float:
        if restriction.stop == UNBOUNDED:
            return 1.0
        return float(max(restriction.stop - restriction.start, 0))


class _PartitionWatermark(WatermarkEstimator):
    """Watermark of one partition: the newest record timestamp seen, plus an idle rule.

    State: ``(watermark, last_record_wall_s)``. When no record arrived for ``idle_s`` wall-clock
    seconds, the watermark advances to ``now - idle_s``, so a quiet partition stops holding back
    the others; this assumes record timestamps follow the wall clock (live capture). Records that
    arrive later with older timestamps are late data.
    """

    def __init__(self, state: tuple[Timestamp, float]) -> None:
        self._watermark, self._last_record_wall_s = state

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        pass  # the reader calls record_seen() with the wall-clock time as well

    def current_watermark(self) -> Timestamp:
        return self._watermark

    def get_estimator_state(self) -> tuple[Timestamp, float]:
        return self._watermark, self._last_record_wall_s

    def record_seen(self, event_time: Timestamp, wall_s: float) -> None:
        """A record with ``event_time`` was emitted at ``wall_s``."""
        self._watermark = max(self._watermark, event_time)
        self._last_record_wall_s = wall_s

    def idle_seconds(self, wall_s: float) -> float:
        """Seconds since the last record (or since the read started)."""
        return wall_s - self._last_record_wall_s

    def advance_if_idle(self, wall_s: float, idle_s: float | None) -> bool:
        """Apply the idle rule; returns whether the watermark moved."""
        if idle_s is None or self.idle_seconds(wall_s) < idle_s:
            return False
        candidate = Timestamp.of(wall_s - idle_s)
        if candidate <= self._watermark:
            return False
        self._watermark = min(candidate, MAX_TIMESTAMP)
        return True


class _WatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(
        self, element: _PartitionDescriptor, restriction: OffsetRange
    ) -> tuple[Timestamp, float]:
        return MIN_TIMESTAMP, time.time()

    def create_watermark_estimator(
        self, estimator_state: tuple[Timestamp, float]
    ) -> _PartitionWatermark:
        return _PartitionWatermark(estimator_state)


_RESTRICTION_PARAM = beam.DoFn.RestrictionParam(_OffsetRestrictionProvider())
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider())
