"""``ReadFromKafka``: topic partitions as an unbounded ``PCollection[KafkaRecord]``.

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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.iobase import RestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from costream.connectors.contract import (
    DEFAULT_MAX_REQUEST_SIZE,
    HEADER_SOURCE,
    REPLAY_HEADER,
    Header,
    RecordTooLargeError,
    dead_letter_record,
    fit_dead_letter,
)
from costream.connectors.kafka.config import (
    _METRICS_NS,
    _READ_RESERVED,
    START_POSITIONS,
    _bootstrap_list,
    _check_client_config,
    _consumer_config,
    _positive,
    _producer_settings,
    _ReadConfig,
)
from costream.connectors.kafka.errors import BrokerUnavailableError, PartitionResetError
from costream.connectors.kafka.offsets import _PartitionDescriptor, _ResolvePartitions
from costream.connectors.kafka.partition import _Fetched, _PartitionReader
from costream.connectors.kafka.records import KafkaRecord
from costream.connectors.kafka.restriction import (
    _RESTRICTION_PARAM,
    _WATERMARK_PARAM,
    _PartitionWatermark,
)
from costream.connectors.kafka.security import check_security

__all__ = ["ReadFromKafka"]

_LOG = logging.getLogger(__name__)

_MAX_EVENT_MS = MAX_TIMESTAMP.micros // 1000 - 1


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition per element; see the module docstring for the delivery contract."""

    def __init__(self, cfg: _ReadConfig) -> None:
        self._cfg = cfg
        self._readers: dict[tuple[str, int], _PartitionReader] = {}
        self._records = Metrics.counter(_METRICS_NS, "records_read")
        self._bytes = Metrics.counter(_METRICS_NS, "bytes_read")
        self._commits = Metrics.counter(_METRICS_NS, "offset_commits")
        self._commit_failures = Metrics.counter(_METRICS_NS, "offset_commit_failures")
        self._dead_lettered = Metrics.counter(_METRICS_NS, "records_dead_lettered")
        self._skipped = Metrics.counter(_METRICS_NS, "records_skipped")
        self._replayed = Metrics.counter(_METRICS_NS, "records_replayed")
        self._dlq_producer: Any = None

    def setup(self) -> None:
        self._readers = {}
        self._dlq_producer = None

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
            self._readers[key] = _PartitionReader(self._cfg, desc.topic, desc.partition)
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
    ) -> Iterator[TimestampedValue]:
        """Emit this partition's records from the restriction's start, then checkpoint."""
        cfg = self._cfg
        reader = self._reader(desc)
        rng = tracker.current_restriction()
        deadline = time.monotonic() + cfg.max_bundle_s
        emitted, last_offset, finished, nbytes = 0, None, False, 0
        while not finished and emitted < cfg.max_records_per_bundle:
            timeout = cfg.poll_timeout_ms if emitted == 0 else 0
            start = rng.start if last_offset is None else last_offset + 1
            records = reader.read(start, cfg.max_records_per_bundle - emitted, timeout)
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
            for r in records:
                if not tracker.try_claim(r.offset):
                    finished = True  # past the end of a bounded range (max_records)
                    break
                replay = r.offset < desc.replay_until
                headers = [h for h in r.headers if h[0] != REPLAY_HEADER]
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
                yield TimestampedValue(
                    KafkaRecord(
                        r.key, r.value or b"", headers, desc.topic, desc.partition, r.offset,
                        ts_ms,
                    ),
                    event_time,
                )  # fmt: skip
                watermark.record_seen(event_time, time.time())
                emitted += 1
                last_offset = r.offset
                nbytes += len(r.value or b"")
            if last_offset is not None and last_offset >= rng.stop - 1:
                finished = True
            if time.monotonic() >= deadline:
                break
        if nbytes:
            self._bytes.inc(nbytes)
        if emitted:
            assert last_offset is not None  # set with every emitted record
            self._records.inc(emitted)
            if cfg.group_id is not None and last_offset + 1 > desc.replay_until:
                finalizer.register(functools.partial(self._commit, reader, last_offset + 1))
        if finished:
            return
        now = time.time()
        if (
            cfg.stop_after_idle_s is not None
            and watermark.idle_seconds(now) >= cfg.stop_after_idle_s
        ):
            _LOG.info(
                "ReadFromKafka: %r idle for %.1f s; stopping.", reader, watermark.idle_seconds(now)
            )
            tracker.try_claim(rng.stop)  # claiming the end marks the restriction done
            return
        watermark.advance_if_idle(now, cfg.idle_partition_s)
        # The FnApiRunner resumes deferred work at once, whatever the delay; the poll timeout
        # above is what keeps an idle partition from spinning.
        tracker.defer_remainder(
            Duration(seconds=cfg.poll_timeout_ms / 1000.0) if emitted == 0 else None
        )


class ReadFromKafka(beam.PTransform):
    """Read topic partitions as an unbounded ``PCollection[KafkaRecord]`` with event times.

    Args:
        bootstrap_servers: ``"host:port"``, comma-separated, or a list.
        topics: one topic name or a list.
        start: ``"earliest"``, ``"latest"``, ``"committed"`` (needs ``group_id``; a partition
            without a committed offset starts at the earliest) or an ``int`` timestamp in ms:
            the first record whose timestamp is at or after it (found by the broker's index,
            then checked by scanning forward, since tansu 0.6 answers 0 for every timestamp).
            On tansu 0.6, ``"latest"`` is off when the partition's last batch held several
            records (it reports the batch's base offset + 1); real Kafka is exact.
        group_id: consumer group whose offsets are read (``start="committed"``) and committed
            after each finalized bundle. Without it nothing is committed. Partitions are
            assigned explicitly; the group is never joined.
        partitions: partition numbers to read (of every topic); default all.
        max_records: read at most this many offsets per partition, then that partition ends.
        stop_after_idle_s: end a partition's read after this many seconds without a record.
            The transform (and ``p.run()``) ends when every partition has ended.
        idle_partition_s: after this many quiet seconds a partition's watermark advances with
            the wall clock (``now - idle_partition_s``) so it does not hold back the others;
            ``None`` disables it (for replays of old data).
        max_records_per_bundle: records per partition per bundle (the duplicate bound, see the
            module docstring).
        max_bundle_s: wall-clock seconds a bundle may spend on one partition.
        poll_timeout_ms: how long one poll waits for data on a quiet partition.
        dead_letter_topic: where records that cannot become a ``KafkaRecord`` go, as dead
            letters with stage ``read``, the reason and ``costream.source`` =
            ``topic/partition/offset``: a batch kafka-python cannot parse (a header name that
            is not UTF-8: the batch is fetched raw, its good records are read as usual) or a
            timestamp beyond the largest event time. The reader waits for the broker's
            acknowledgement before it moves on. Without it (or when even the cut-to-fit dead
            letter cannot be written) such a record is skipped, logged and counted
            (``records_skipped``). Either way the offset advances, and is committed.
        dead_letter_max_bytes: largest dead letter the reader writes (see
            :func:`~costream.connectors.contract.sizing.fit_dead_letter`).
        warm_restart_frames: with ``start="committed"``, re-read the records just before each
            partition's committed offset, enough for this many records of every stream (key)
            found there, and mark them with
            :data:`~costream.connectors.contract.headers.REPLAY_HEADER`: stateful stages rebuild each
            stream's state from them and emit nothing for them, so a restart without a
            checkpoint (the embedded runner, a fresh Flink job) is invisible in the output. Use
            the model's window n. 0 (the default) re-reads nothing. Replayed records are
            counted (``records_replayed``) and never committed or dead-lettered again.
        warm_restart_max_records: scan at most this many records back per partition.
        broker_timeout_s: a partition that got no answer from any broker for this long fails
            the read with :class:`~costream.connectors.kafka.errors.BrokerUnavailableError` naming the servers and the position;
            shorter outages (a broker restart) are waited out. On every quiet poll (at most once
            a second) the reader also checks that the partition still reaches its position:
            when the log now ends below it (topic recreated, log truncated) the read fails with
            :class:`~costream.connectors.kafka.errors.PartitionResetError` instead of skipping the new records.
        client_config: extra kafka-python ``KafkaConsumer`` settings, merged last (SASL, SSL,
            fetch sizes...). A value ``{"from_env": "NAME"}`` is read from the environment on
            the worker. The reader's dead-letter producer gets the connection settings. With a
            ``security_protocol`` other than ``PLAINTEXT``, a refused SASL/PLAIN password or a
            broker certificate that fails verification raises :class:`~costream.connectors.kafka.errors.KafkaSecurityError` at
            once (see
            :func:`~costream.connectors.kafka.security.check_security`), not after kafka-python's 30 s of reconnects.

    Unless ``max_records`` or ``stop_after_idle_s`` ends every partition, the read never ends.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        *,
        start: str | int = "earliest",
        group_id: str | None = None,
        partitions: Sequence[int] | None = None,
        max_records: int | None = None,
        stop_after_idle_s: float | None = None,
        idle_partition_s: float | None = 10.0,
        max_records_per_bundle: int = 500,
        max_bundle_s: float = 1.0,
        poll_timeout_ms: int = 100,
        dead_letter_topic: str | None = None,
        dead_letter_max_bytes: int = DEFAULT_MAX_REQUEST_SIZE,
        broker_timeout_s: float = 60.0,
        client_config: Mapping[str, Any] | None = None,
        warm_restart_frames: int = 0,
        warm_restart_max_records: int = 100_000,
    ) -> None:
        super().__init__()
        servers = _bootstrap_list(bootstrap_servers)
        if isinstance(warm_restart_frames, bool) or not (
            isinstance(warm_restart_frames, int) and warm_restart_frames >= 0
        ):
            raise ValueError(
                f"warm_restart_frames must be a whole number of frames >= 0, got {warm_restart_frames!r}."
            )
        _positive(
            "warm_restart_max_records", warm_restart_max_records, integer=True, optional=False
        )
        if dead_letter_topic is not None and (
            not isinstance(dead_letter_topic, str) or not dead_letter_topic
        ):
            raise ValueError(
                f"dead_letter_topic must be a topic name or None, got {dead_letter_topic!r}."
            )
        _positive("dead_letter_max_bytes", dead_letter_max_bytes, integer=True, optional=False)
        _positive("broker_timeout_s", broker_timeout_s, optional=False)
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise ValueError(
                f"topics must be a topic name or a non-empty list of names, got {topics!r}."
            )
        if isinstance(start, bool) or not (
            start in START_POSITIONS or (isinstance(start, int) and start >= 0)
        ):
            raise ValueError(
                f"start={start!r} is not valid; use one of {', '.join(map(repr, START_POSITIONS))} "
                "or a timestamp in ms since the epoch (an int >= 0)."
            )
        if start == "committed" and not group_id:
            raise ValueError("start='committed' needs a group_id whose committed offsets to read.")
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ValueError(f"group_id must be a non-empty string or None, got {group_id!r}.")
        parts: tuple[int, ...] | None = None
        if partitions is not None:
            parts = tuple(partitions)
            if (
                not parts
                or not all(isinstance(p, int) and p >= 0 for p in parts)
                or len(set(parts)) != len(parts)
            ):
                raise ValueError(
                    f"partitions must be a non-empty list of distinct partition numbers >= 0, got {partitions!r}."
                )
        _positive("max_records", max_records, integer=True)
        _positive("stop_after_idle_s", stop_after_idle_s)
        _positive("idle_partition_s", idle_partition_s)
        _positive("max_records_per_bundle", max_records_per_bundle, integer=True, optional=False)
        _positive("max_bundle_s", max_bundle_s, optional=False)
        _positive("poll_timeout_ms", poll_timeout_ms, integer=True, optional=False)
        cfg = _check_client_config(client_config, _consumer_config(), _READ_RESERVED)
        self._cfg = _ReadConfig(
            servers, topic_list, start, group_id, parts, max_records,
            None if stop_after_idle_s is None else float(stop_after_idle_s),
            None if idle_partition_s is None else float(idle_partition_s),
            max_records_per_bundle, float(max_bundle_s), poll_timeout_ms, cfg,
            dead_letter_topic, dead_letter_max_bytes, float(broker_timeout_s),
            warm_restart_frames, warm_restart_max_records,
        )  # fmt: skip

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "ResolvePartitions" >> beam.ParDo(_ResolvePartitions(self._cfg))
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadPartitions"
            >> beam.ParDo(_ReadPartitionFn(self._cfg)).with_output_types(KafkaRecord)
        )
