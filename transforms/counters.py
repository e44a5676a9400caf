"""Counters that are both Beam metrics and readable while the job runs in this process.

Beam's metrics reach the caller only through the ``PipelineResult`` (on the embedded runner, after
the pipeline ends; on Flink, through its REST API). ``costream run`` also wants a live status line
on the embedded runner, where every DoFn runs in the ``costream`` process itself: each
:class:`Counter` here increments its Beam counter *and* a process-local total that
:func:`snapshot` reads. On a runner whose workers are other processes the local totals stay at
zero there and the Beam metrics are the source (``costream run`` then reads Flink's REST API).

Gauges are process-local callables (e.g. streams whose state this process holds), read by
:func:`snapshot` under their name.

Example:
    >>> c = Counter("costream", "doctest_frames")
    >>> c.inc(2)
    >>> snapshot()["doctest_frames"] >= 2
    True
"""

from __future__ import annotations

import threading
from collections import Counter as _Totals
from collections.abc import Callable

from apache_beam.metrics import Metrics

__all__ = ["Counter", "register_gauge", "reset", "snapshot"]

_LOCK = threading.Lock()
_TOTALS: _Totals[str] = _Totals()
_GAUGES: dict[str, Callable[[], int]] = {}


class Counter:
    """A Beam counter ``namespace:name`` whose increments are also summed per process.

    Picklable (only the names travel with a DoFn); the Beam counter is made on first use.
    """

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self._beam = Metrics.counter(namespace, name)

    def inc(self, n: int = 1) -> None:
        """Add ``n`` to the Beam counter and to this process's total of ``name``."""
        self._beam.inc(n)
        with _LOCK:
            _TOTALS[self.name] += n

    def __getstate__(self) -> dict:
        return {"namespace": self.namespace, "name": self.name}

    def __setstate__(self, st: dict) -> None:
        self.__init__(st["namespace"], st["name"])  # type: ignore[misc]  # unpickling


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
