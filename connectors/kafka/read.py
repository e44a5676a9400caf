"""The splittable DoFn behind ``ReadFromKafka``: one partition per element; the delivery contract.

``ReadFromKafka`` is ``Impulse -> resolve partitions and start offsets -> Reshuffle -> SDF read``.
The splittable DoFn reads one topic partition per element with an offset-range restriction, emits
:class:`~costream.connectors.kafka.records.KafkaRecord` elements stamped with the record
timestamp (event time), holds a per-partition watermark, and commits offsets only from bundle
finalization.

Delivery: at-least-once end to end. Offsets are committed (when ``group_id`` is given) from the
bundle finalizer, which a runner calls only after it has durably committed the bundle's output;
so after a crash, ``start="committed"`` re-reads exactly the records read since the last finalized
bundle. On the FnApiRunner (measured, Beam 2.77) every bundle is finalized synchronously right
after it succeeds, and a bundle holds at most ``max_records_per_bundle`` records per partition:
that is the duplicate bound there. On a runner that never finalizes bundles, offsets are never
committed: nothing is lost, but ``start="committed"`` then replays from whatever was committed
before (use a timestamp start there instead).

Example:
    >>> import apache_beam as beam  # doctest: +SKIP
    >>> with beam.Pipeline(runner="FnApiRunner") as p:  # doctest: +SKIP
    ...     _ = (
    ...         p
    ...         | ReadFromKafka("127.0.0.1:9092", "frames", start="earliest", stop_after_idle_s=5)
    ...         | beam.Map(lambda r: OutgoingRecord(r.key, r.value, r.headers))
    ...         | WriteToKafka("127.0.0.1:9092", "frames-copy")
    ...     )
"""

import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.iobase import RestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from costream.connectors.contract import (
    HEADER_SOURCE,
    REPLAY_HEADER,
    Header,
    RecordTooLargeError,
    dead_letter_record,
    fit_dead_letter,
    is_replay,
)
from costream.connectors.kafka.config import _METRICS_NS, _producer_settings, _ReadConfig
from costream.connectors.kafka.errors import BrokerUnavailableError, PartitionResetError
from costream.connectors.kafka.offsets import _PartitionDescriptor
from costream.connectors.kafka.partition import _Fetched, _PartitionReader, _RdPartitionReader
from costream.connectors.kafka.records import KafkaRecord
from costream.connectors.kafka.restriction import (
    _RESTRICTION_PARAM,
    _WATERMARK_PARAM,
    _PartitionWatermark,
)
from costream.connectors.kafka.security import check_security

__all__: list[str] = []

_LOG = logging.getLogger(__name__)

_MAX_EVENT_MS = MAX_TIMESTAMP.micros // 1000 - 1
_GLOBAL_WINDOWS = (GlobalWindow(),)
"""The windows of every record read: the read starts from an ``Impulse``, in the global window."""


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition per element; see the module docstring for the delivery contract."""

    def __init__(self, cfg: _ReadConfig) -> None:
        self._cfg = cfg
        self._readers: dict[tuple[str, int], _PartitionReader] = {}
        # per partition: time.monotonic() of its last record here (or of its first read), for
        # stop_after_idle_s: a step of the wall clock must not end a read early
        self._active: dict[tuple[str, int], float] = {}
        self._records = Metrics.counter(_METRICS_NS, "records_read")
        self._bytes = Metrics.counter(_METRICS_NS, "bytes_read")
        self._commits = Metrics.counter(_METRICS_NS, "offset_commits")
        self._commit_failures = Metrics.counter(_METRICS_NS, "offset_commit_failures")
        self._dead_lettered = Metrics.counter(_METRICS_NS, "records_dead_lettered")
        self._skipped = Metrics.counter(_METRICS_NS, "records_skipped")
        self._replayed = Metrics.counter(_METRICS_NS, "records_replayed")
        self._dlq_producer: Any = None

    def setup(self) -> None:
        self._readers, self._active = {}, {}
        self._dlq_producer = None
        self._bundle_emitted = 0

    def start_bundle(self) -> None:
        # records this bundle emitted so far, from any partition: once some wait downstream
        # (a stateful stage's group is stepped at the bundle's end), no poll may block on a
        # quiet partition
        self._bundle_emitted = 0

    def _dead_letter(self, desc: _PartitionDescriptor, f: _Fetched, reason: str) -> None:
        """Publish ``f`` as a dead letter (stage ``read``) and wait for it; else count a skip."""
        cfg = self._cfg
        where = f"{desc.topic}/{desc.partition}/{f.offset}"
        rec = dead_letter_record(
            f.key, f.value, [*f.headers, (HEADER_SOURCE, where.encode())], reason, "read"
        )
        if cfg.dead_letter_topic is None:
            self._skipped.inc()
            _LOG.error("ReadFromKafka: skipped the record at %s (no dead_letter_topic): %s",
                       where, reason)  # fmt: skip
            return
        try:
            rec = fit_dead_letter(rec, cfg.dead_letter_max_bytes)
        except RecordTooLargeError as err:
            self._skipped.inc()
            _LOG.error("ReadFromKafka: skipped the record at %s: %s; its dead letter does not "
                       "fit either: %s", where, reason, err)  # fmt: skip
            return
        if self._dlq_producer is None:
            from kafka import KafkaProducer

            settings = _producer_settings(cfg.client_config)
            check_security("ReadFromKafka (dead letters)", cfg.bootstrap_servers, settings)
            self._dlq_producer = KafkaProducer(
                bootstrap_servers=cfg.bootstrap_servers, acks="all",
                max_request_size=cfg.dead_letter_max_bytes, client_id="costream-read-dlq",
                **settings,
            )  # fmt: skip
        self._dlq_producer.send(
            cfg.dead_letter_topic, key=rec.key, value=rec.value, headers=rec.headers
        ).get(timeout=cfg.broker_timeout_s)
        self._dead_lettered.inc()
        _LOG.warning("ReadFromKafka: dead-lettered the record at %s to %r: %s", where,
                     cfg.dead_letter_topic, reason)  # fmt: skip

    def _check_broker(self, reader: _PartitionReader, position: int) -> None:
        """After an empty poll: fail when no broker answered for too long, or the log moved."""
        cfg, now = self._cfg, time.monotonic()
        if reader.connected() and now - reader.last_check < 1.0:
            return
        if now - reader.last_contact > cfg.broker_timeout_s:
            raise BrokerUnavailableError(
                f"ReadFromKafka: no broker of {','.join(cfg.bootstrap_servers)} answered for "
                f"{now - reader.last_contact:.0f} s (broker_timeout_s={cfg.broker_timeout_s:g}) "
                f"while {reader!r} waited for records at offset {position}."
            )
        if not reader.connected():
            return
        reader.last_check = now
        try:
            end = reader.end_offset()
        except Exception:  # a broker between restarts; the deadline above decides
            return
        if end < position and reader.lost_position(position, end):
            raise PartitionResetError(
                f"ReadFromKafka: {reader!r} is at offset {position} but the partition now ends at "
                f"offset {end}: the topic was deleted and recreated, or its log truncated. Records "
                "were lost or would be skipped; reset the group's offsets (or read from "
                "'earliest') once you know which."
            )

    def teardown(self) -> None:
        if self._dlq_producer is not None:
            self._dlq_producer.close(timeout=5)
            self._dlq_producer = None
        for reader in self._readers.values():
            try:
                reader.close()
            except Exception as err:  # teardown must not mask the real outcome
                _LOG.warning("ReadFromKafka: closing %r failed: %s", reader, err)
        self._readers = {}

    def _reader(self, desc: _PartitionDescriptor) -> _PartitionReader:
        key = (desc.topic, desc.partition)
        if key not in self._readers:
            kind = _RdPartitionReader if self._cfg.client == "librdkafka" else _PartitionReader
            self._readers[key] = kind(self._cfg, desc.topic, desc.partition)
            self._active[key] = time.monotonic()
        return self._readers[key]

    def _commit(self, reader: _PartitionReader, next_offset: int) -> None:
        # Runs from bundle finalization: the runner has committed the bundle's output. A failed
        # commit is logged and counted, never raised: the next finalized bundle commits a later
        # offset, and until then a restart only re-reads (at-least-once).
        try:
            reader.commit(next_offset)
            self._commits.inc()
        except Exception as err:
            self._commit_failures.inc()
            _LOG.warning(
                "ReadFromKafka: committing offset %d with %r failed: %s", next_offset, reader, err
            )

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        desc: _PartitionDescriptor,
        # Beam passes the finalizer positionally and the tracker / estimator by keyword, so the
        # finalizer must come first or it lands on the tracker's position.
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: RestrictionTracker = _RESTRICTION_PARAM,
        watermark: _PartitionWatermark = _WATERMARK_PARAM,
    ) -> Iterator[WindowedValue]:
        """Emit this partition's records from the restriction's start, then checkpoint."""
        cfg = self._cfg
        reader = self._reader(desc)
        rng = tracker.current_restriction()
        deadline = time.monotonic() + cfg.max_bundle_s
        emitted, last_offset, finished, nbytes = 0, None, False, 0
        while not finished and emitted < cfg.max_records_per_bundle:
            timeout = cfg.poll_timeout_ms if emitted == 0 and self._bundle_emitted == 0 else 0
            start = rng.start if last_offset is None else last_offset + 1
            asked = cfg.max_records_per_bundle - emitted
            records = reader.read(start, asked, timeout)
            if not records:
                if emitted == 0:
                    self._check_broker(reader, start)
                break
            if records[0].offset < start:
                # The consumer fell back to auto_offset_reset: ``start`` is out of range.
                raise RuntimeError(
                    f"{reader!r} asked for offset {start} but the broker answered from offset "
                    f"{records[0].offset}, so offset {start} is out of range (was the topic "
                    "deleted and recreated?). Reset the group's offsets or read from 'earliest'."
                )
            newest: Timestamp | None = None  # the round's latest event time (watermark)
            for r in records:
                if not tracker.try_claim(r.offset):
                    finished = True  # past the end of a bounded range (max_records)
                    break
                replay = r.offset < desc.replay_until
                headers = r.headers  # the reader's own list
                if is_replay(headers):
                    headers = [h for h in headers if h[0] != REPLAY_HEADER]
                if replay:
                    headers.append(Header(REPLAY_HEADER, b"1"))
                    self._replayed.inc()
                error = r.error
                if error is None and r.timestamp is not None and r.timestamp > _MAX_EVENT_MS:
                    error = (
                        f"record timestamp {r.timestamp} ms is beyond the largest event time "
                        f"({_MAX_EVENT_MS} ms)"
                    )
                if error is not None:
                    if not replay:  # a replayed record's dead letter was written before
                        self._dead_letter(desc, r, error)
                    emitted += 1
                    last_offset = r.offset
                    continue
                ts_ms = (
                    r.timestamp
                    if r.timestamp is not None and r.timestamp >= 0
                    else int(time.time() * 1000)
                )
                event_time = Timestamp(micros=ts_ms * 1000)
                # windowed here: a TimestampedValue costs a window assignment per record
                yield WindowedValue(
                    KafkaRecord(
                        r.key, r.value or b"", headers, desc.topic, desc.partition, r.offset,
                        ts_ms,
                    ),
                    event_time,
                    _GLOBAL_WINDOWS,
                )  # fmt: skip
                if newest is None or event_time > newest:
                    newest = event_time
                emitted += 1
                last_offset = r.offset
                nbytes += len(r.value or b"")
            if newest is not None:  # once per round: the estimator's lock is taken per call
                watermark.record_seen(newest, time.time())
            if last_offset is not None and last_offset >= rng.stop - 1:
                finished = True
            if len(records) < asked or time.monotonic() >= deadline:
                # caught up with what the consumer had fetched: polling on would hold the
                # bundle (and what waits for its end downstream) open for records that
                # trickle in while it reads
                break
        if nbytes:
            self._bytes.inc(nbytes)
        if emitted:
            self._bundle_emitted += emitted
            assert last_offset is not None  # set with every emitted record
            self._active[(desc.topic, desc.partition)] = time.monotonic()
            self._records.inc(emitted)
            if cfg.group_id is not None and last_offset + 1 > desc.replay_until:
                finalizer.register(functools.partial(self._commit, reader, last_offset + 1))
        if finished:
            return
        now = time.time()
        quiet_s = time.monotonic() - self._active[(desc.topic, desc.partition)]
        if cfg.stop_after_idle_s is not None and quiet_s >= cfg.stop_after_idle_s:
            _LOG.info("ReadFromKafka: %r idle for %.1f s; stopping.", reader, quiet_s)
            tracker.try_claim(rng.stop)  # claiming the end marks the restriction done
            return
        watermark.advance_if_idle(now, cfg.idle_partition_s)
        # The FnApiRunner resumes deferred work at once, whatever the delay; the poll timeout
        # above is what keeps an idle partition from spinning.
        tracker.defer_remainder(
            Duration(seconds=cfg.poll_timeout_ms / 1000.0) if emitted == 0 else None
        )
