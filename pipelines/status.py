"""The status line of ``costream run``: costream's counters, every few seconds and at the end.

A status line reads one dict of counts by counter name (the names of
:mod:`costream.transforms.counters`, the same counters Beam and Flink show)::

    status: 1234 frames, 1200 detections (64 warm-up), 3 dead letters, 2 duplicates, 1 resets,
    4 gaps, 8 streams held, 168 kB state, 250 frames/s

(one line). *frames* are the records that entered decode (``decoded + decode_dead_letters``);
*dead letters* add up every stage's (decode, features, inference) and the Kafka connector's
``records_dead_lettered`` (records the reader could not read, detections the writer could not
publish). A counter missing from the dict counts 0 (nothing happened yet, or a stage the spec does
not have); the gauges ``streams_held`` and ``state_bytes`` are left out of the line when missing
(they exist only where the inference DoFn runs in this process).

Where the counts come from while the job runs:

- :class:`LocalCounts`: the embedded runner runs every DoFn in this process, so
  :func:`costream.transforms.counters.snapshot` is live (the Kafka connector's plain Beam
  counters are not in it: its dead letters show only in the summary).
- :class:`FlinkCounts`: a Flink cluster's REST API (costream's Beam metrics summed over
  subtasks).

The summary at the end (:meth:`StatusReporter.summary`) counts from the ``PipelineResult``'s Beam
metrics, which are authoritative, and takes the gauges from the last live read.

Example:
    >>> format_status({"decoded": 10, "decode_dead_letters": 2, "detections_out": 9})
    'status: 12 frames, 9 detections (0 warm-up), 2 dead letters, 0 duplicates, 0 resets, 0 gaps'
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Protocol

__all__ = [
    "COUNTERS",
    "GAUGES",
    "FlinkCounts",
    "LocalCounts",
    "StatusReporter",
    "counts_from_result",
    "dead_letters",
    "format_status",
    "frames",
    "visible_on_stderr",
]

log = logging.getLogger("costream")

# Counter names by namespace, as the stages declare them (all names are distinct).
NAMESPACES: dict[str, tuple[str, ...]] = {
    "costream": (
        "frames_in",
        "detections_out",
        "warmup_frames",
        "duplicates",
        "gaps",
        "state_resets",
        "stream_epochs",
        "dead_letters",
        "idle_cleared",
        "replayed_frames",
    ),
    "costream.decode": ("decoded", "decode_dead_letters"),
    "costream.features": ("features", "features_dead_letters"),
    "costream.kafka": ("records_read", "records_dead_lettered", "records_written"),
}
COUNTERS = frozenset(name for names in NAMESPACES.values() for name in names)
GAUGES = ("streams_held", "state_bytes")
_DEAD_LETTERS = ("decode_dead_letters", "features_dead_letters", "dead_letters")


def frames(counts: Mapping[str, float]) -> int:
    """Records that entered decode: decoded or dead-lettered there."""
    return int(counts.get("decoded", 0) + counts.get("decode_dead_letters", 0))


def dead_letters(counts: Mapping[str, float]) -> int:
    """Dead letters of every stage, the Kafka reader's and writer's included."""
    return int(
        sum(counts.get(n, 0) for n in _DEAD_LETTERS) + counts.get("records_dead_lettered", 0)
    )


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def format_status(
    counts: Mapping[str, float], rate: float | None = None, label: str = "status"
) -> str:
    """One line of ``counts`` (by counter name; see the module docstring); ``rate`` in frames/s."""
    c = {name: int(counts.get(name, 0)) for name in COUNTERS}
    parts = [
        f"{frames(counts)} frames",
        f"{c['detections_out']} detections ({c['warmup_frames']} warm-up)",
        f"{dead_letters(counts)} dead letters",
        f"{c['duplicates']} duplicates",
        f"{c['state_resets']} resets",
        f"{c['gaps']} gaps",
    ]
    if "streams_held" in counts:
        parts.append(f"{int(counts['streams_held'])} streams held")
    if "state_bytes" in counts:
        parts.append(f"{_bytes(counts['state_bytes'])} state")
    if rate is not None:
        parts.append(f"{rate:.0f} frames/s")
    return f"{label}: " + ", ".join(parts)


def counts_from_result(result: Any) -> dict[str, int]:
    """Counters (summed over steps) and gauges of costream from a PipelineResult's Beam metrics."""
    query = result.metrics().query()
    out: dict[str, int] = {}
    for m in query.get("counters", []):
        name = m.key.metric
        if name.namespace in NAMESPACES:
            out[name.name] = out.get(name.name, 0) + int(m.result or 0)
    for m in query.get("gauges", []):
        name = m.key.metric
        if name.namespace in NAMESPACES and name.name in GAUGES and m.result is not None:
            out[name.name] = out.get(name.name, 0) + int(m.result.value or 0)
    return out


class CountSource(Protocol):
    """Where live counts come from: ``read()`` returns them, or ``None`` when not (yet) known."""

    def read(self) -> dict[str, int] | None: ...


class LocalCounts:
    """Counter totals of this process since construction (the embedded runner), plus its gauges.

    Totals are process-wide, so the ones present at construction (an earlier job in this
    process) are subtracted.
    """

    def __init__(self) -> None:
        from costream.transforms import counters

        self._snapshot = counters.snapshot
        self._base = {k: v for k, v in counters.snapshot().items() if k not in GAUGES}

    def read(self) -> dict[str, int]:
        now = self._snapshot()
        return {k: v - self._base.get(k, 0) if k not in GAUGES else v for k, v in now.items()}


class FlinkCounts:
    """A Flink job's costream counters over REST, once the job ``job_name`` is submitted."""

    def __init__(self, master: str, job_name: str) -> None:
        from costream.pipelines.flink import FlinkRest

        self.api, self.job_name = FlinkRest(master), job_name
        self._job: str | None = None

    def read(self) -> dict[str, int] | None:
        """The counts (``None`` before the job shows up); raises ``FlinkError`` when REST fails."""
        if self._job is None:
            ids = [j["id"] for j in self.api.jobs() if j["name"] == self.job_name]
            if not ids:
                return None
            self._job = ids[0]
        return from_flink(self.api.user_metrics(self._job))


def from_flink(metrics: Mapping[str, float]) -> dict[str, int]:
    """Counts by name from Flink's ``<namespace>_<name>`` keys (dots as underscores)."""
    out: dict[str, int] = {}
    for ns, names in NAMESPACES.items():
        prefix = ns.replace(".", "_") + "_"
        for name in names:
            if prefix + name in metrics:
                out[name] = out.get(name, 0) + int(metrics[prefix + name])
    return out


class StatusReporter:
    """Logs a status line every ``every_s`` seconds from a background thread, and the summary.

    Use it around the run (``p.run()`` on the embedded runner blocks until the sources end)::

        with StatusReporter(LocalCounts(), every_s=10) as status:
            result = pipeline.run()
            result.wait_until_finish()
        status.summary(result)

    ``source=None`` or ``every_s <= 0`` logs no status lines; the summary still comes. Lines go
    to the ``costream`` logger at INFO. ``clock`` (seconds) is injectable for tests.
    """

    def __init__(
        self,
        source: CountSource | None,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.every_s, self.clock = source, every_s, clock
        self.last: dict[str, int] = {}
        self._started = self._t = clock()
        self._frames = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def line(self) -> str | None:
        """Read the source and format a status line (frames/s since the previous line)."""
        if self.source is None:
            return None
        try:
            counts = self.source.read()
        except Exception as err:  # a status line must never stop the job
            if not self._warned:
                log.warning("status: cannot read the counters (%s); trying again", err)
                self._warned = True
            return None
        if counts is None:
            return None
        now, n = self.clock(), frames(counts)
        rate = (n - self._frames) / (now - self._t) if now > self._t else None
        self.last, self._t, self._frames = counts, now, n
        return format_status(counts, rate)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            text = self.line()
            if text is not None:
                log.info("%s", text)

    def __enter__(self) -> StatusReporter:
        self._started = self._t = self.clock()
        if self.source is not None and self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="costream-status", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)  # a REST read times out after 30 s

    def summary(self, result: Any) -> str:
        """Log and return the summary line: ``result``'s Beam metrics, gauges from the last read.

        Where the runner reports none of costream's counters (the query fails or comes back
        empty) the last live counts stand in, and the line says so.
        """
        self.line()  # the gauges as the job ended
        try:
            counts = counts_from_result(result)
        except Exception as err:
            log.warning("summary: the runner reports no metrics (%s)", err)
            counts = {}
        label = "summary"
        if not COUNTERS & counts.keys() and COUNTERS & self.last.keys():
            counts, label = dict(self.last), "summary (live counts)"
        counts.update({k: self.last[k] for k in GAUGES if k in self.last and k not in counts})
        elapsed = self.clock() - self._started
        rate = frames(counts) / elapsed if elapsed > 0 else None
        text = format_status(counts, rate, label=label) + f" over {elapsed:.1f} s"
        log.info("%s", text)
        return text


def visible_on_stderr() -> AbstractContextManager[logging.Handler]:
    """The CLI's logging at INFO while inside: the status lines and all else on stderr.

    The same setup ``costream`` itself uses around every command
    (:func:`costream.pipelines.logs.configured`, where Beam's internal noise is filtered); for
    code that calls :func:`~costream.pipelines.runner.run_spec` without the CLI.
    """
    from costream.pipelines.logs import configured

    return configured("INFO")
