"""Counters that are both Beam metrics and readable while the job runs in this process.

Beam's metrics reach the caller only through the ``PipelineResult`` (on the embedded runner, after
the pipeline ends; on Flink, through its REST API). ``costream run`` also wants a live status line
on the embedded runner, where every DoFn runs in the ``costream`` process itself: each
:class:`Counter` here increments its Beam counter *and* a process-local total that
:func:`snapshot` reads. On a runner whose workers are other processes the local totals stay at
zero there and the Beam metrics are the source (``costream run`` then reads Flink's REST API).

Gauges are process-local callables (e.g. streams whose state this process holds), read by
:func:`snapshot` under their name.

Updates made in a timer callback go through a :class:`Hold` and reach Beam from the DoFn's
``finish_bundle``: Beam's SDK worker runs timer callbacks outside the DoFn's own metrics scope
(``process_timer`` is not wrapped in the operation's scoped state), so a counter incremented
there lands in another operation's container, and the embedded runner dropped such updates
(4 of 60 frames in a test; 11 of 60 in ``tests/transforms/test_batching.py``'s check).

Example:
    >>> c = Counter("costream", "doctest_frames")
    >>> c.inc(2)
    >>> snapshot()["doctest_frames"] >= 2
    True
"""

from __future__ import annotations

import functools
import threading
from collections import Counter as _Totals
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from apache_beam.metrics import Metrics
from apache_beam.metrics.execution import MetricsEnvironment
from apache_beam.metrics.metricbase import MetricName

__all__ = ["Counter", "Distribution", "Hold", "register_gauge", "reset", "snapshot"]

_LOCK = threading.Lock()
_TOTALS: _Totals[str] = _Totals()
_GAUGES: dict[str, Callable[[], int]] = {}


class Hold:
    """Beam metric updates held while a timer callback runs, published by :meth:`release`.

    Wrap a timer callback's body in :meth:`during` and call :meth:`release` from the DoFn's
    ``finish_bundle`` (which runs in the DoFn's metrics scope, after the bundle's timers).
    Process-local totals (:func:`snapshot`) are not held.
    """

    def __init__(self) -> None:
        self.active = False
        self._pending: list[tuple[Callable[[int], None], int]] = []

    @contextmanager
    def during(self) -> Iterator[None]:
        """Hold updates until :meth:`release` (inside a generator: while it runs)."""
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def submit(self, update: Callable[[int], None], value: int) -> None:
        """``update(value)`` now, or at :meth:`release` while the hold is active."""
        if self.active:
            self._pending.append((update, value))
        else:
            update(value)

    def release(self) -> None:
        """Publish the held updates in the current (``finish_bundle``) metrics scope."""
        pending, self._pending = self._pending, []
        for update, value in pending:
            update(value)


_NEVER = Hold()  # the hold of metrics that no timer callback updates: never active


class Counter:
    """A Beam counter ``namespace:name`` whose increments are also summed per process.

    Picklable (only the names travel with a DoFn); the Beam counter is made on first use.
    ``hold``: increments made while it is active wait for its release.
    """

    def __init__(self, namespace: str, name: str, hold: Hold | None = None) -> None:
        self.namespace, self.name, self.hold = namespace, name, hold or _NEVER
        self._beam = Metrics.counter(namespace, name)

    def inc(self, n: int = 1) -> None:
        """Add ``n`` to the Beam counter and to this process's total of ``name``."""
        self.hold.submit(self._beam.inc, n)
        with _LOCK:
            _TOTALS[self.name] += n

    def __getstate__(self) -> dict:
        return {"namespace": self.namespace, "name": self.name}

    def __setstate__(self, st: dict) -> None:
        self.__init__(st["namespace"], st["name"])  # type: ignore[misc]  # unpickling


class Distribution:
    """A Beam distribution ``namespace:name`` whose updates may wait for a :class:`Hold`."""

    def __init__(self, namespace: str, name: str, hold: Hold | None = None) -> None:
        self.hold = hold or _NEVER
        self._beam = Metrics.distribution(namespace, name)
        self._name = MetricName(namespace, name)

    def update(self, value: int) -> None:
        self.hold.submit(self._beam.update, value)

    def update_counts(self, counts: Mapping[int, int]) -> None:
        """``update(value)`` ``count`` times for each ``value: count`` of ``counts``.

        The same as that many :meth:`update` calls, with one lookup of the current metrics
        container instead of one per update (the batched inference DoFn records per-frame
        values that repeat for every frame of a step).
        """
        for value, count in counts.items():
            self.hold.submit(functools.partial(self._repeat, count=count), value)

    def _repeat(self, value: int, count: int) -> None:
        container = MetricsEnvironment.current_container()
        if container is None:  # outside any DoFn's scope, where update() records nothing too
            return
        cell = container.get_distribution(self._name)
        for _ in range(count):
            cell.update(value)


def register_gauge(name: str, read: Callable[[], int]) -> None:
    """Make ``read()`` part of every :func:`snapshot` under ``name`` (the last one registered wins)."""
    with _LOCK:
        _GAUGES[name] = read


def snapshot() -> dict[str, int]:
    """Counter totals and current gauge values of this process, by name."""
    with _LOCK:
        out = dict(_TOTALS)
        gauges = list(_GAUGES.items())
    for name, read in gauges:
        try:
            out[name] = int(read())
        except Exception:  # a gauge must never break the status line
            continue
    return out


def reset() -> None:
    """Zero every total (a new job in this process; tests)."""
    with _LOCK:
        _TOTALS.clear()
