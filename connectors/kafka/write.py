"""The producer DoFn behind ``WriteToKafka``: size, send, and flush a bundle at a time.

The writer produces elements and flushes in ``finish_bundle``, so a bundle succeeds only once
the broker acknowledged it. It sizes every record first
(:mod:`costream.connectors.contract.sizing`): one above ``max_request_size`` is an error,
except in ``WriteDeadLetters``, which cuts the value to fit and says so in headers (a dead
letter is the original record plus its reason, so an input near the limit would otherwise
never get out). What the broker did not acknowledge is resent with a new producer, a few
rounds. The producer's settings (``LINGER_MS``, ``BATCH_SIZE``) and its keyed partitioner
are here too; the public transforms are :mod:`costream.connectors.kafka.write_transform`.
"""

import logging
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from costream.connectors.contract import (
    HEADER_ORIGINAL_SHA256,
    HEADER_ORIGINAL_SIZE,
    HEADER_TRUNCATED,
    OutgoingRecord,
    RecordTooLargeError,
    dead_letter_record,
    fit_dead_letter,
    fits,
    is_replay,
    record_size,
)
from costream.connectors.kafka.config import _METRICS_NS, _WriteConfig, resolve_client_config
from costream.connectors.kafka.errors import BrokerUnavailableError
from costream.connectors.kafka.librdkafka import RdProducer
from costream.connectors.kafka.outgoing import _kind, as_outgoing
from costream.connectors.kafka.security import check_security

__all__: list[str] = []

_LOG = logging.getLogger(__name__)


def _show_key(key: bytes | None) -> str:
    return "None" if key is None else repr(key[:64]) + ("..." if len(key) > 64 else "")


_RESEND_ROUNDS = 3
"""Times finish_bundle recreates the producer and resends what was not acknowledged."""

LINGER_MS = 5
"""How long WriteToKafka's producer lets a record batch fill before sending it (client_config may
override ``linger_ms``). finish_bundle's flush sends at once whatever is waiting."""
BATCH_SIZE = 256 << 10
"""Bytes per record batch (at most ``max_request_size``; client_config may override
``batch_size``)."""


def _keyed_partitioner() -> Any:
    """kafka-python's ``DefaultPartitioner`` for keyed records, without its per-record work.

    The default builds the set of partitions with a leader for every record, keyed or not, and
    hashes the key again each time; a key's partition is ``murmur2(key) & 0x7fffffff`` modulo
    the partition count, over all partitions in order, so the hashes of the streams' keys are
    kept (at most 4096). Records without a key go to the default (a random available one).
    """
    from kafka.partitioner import DefaultPartitioner, Partitioner
    from kafka.partitioner.default import murmur2

    default = DefaultPartitioner()

    class _Keyed(Partitioner):
        def __init__(self) -> None:
            self._hashes: dict[bytes, int] = {}

        def partition(  # type: ignore[no-untyped-def]
            self, topic, key, serialized_key, value, serialized_value, cluster
        ):
            if type(serialized_key) is not bytes:
                return default.partition(
                    topic, key, serialized_key, value, serialized_value, cluster
                )
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                raise ValueError(f"Topic {topic} not found in ClusterMetadata")
            h = self._hashes.get(serialized_key)
            if h is None:
                if len(self._hashes) >= 4096:
                    self._hashes.clear()
                h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
            return sorted(partitions)[h % len(partitions)]

    return _Keyed()


def _too_large(err: BaseException | None) -> bool:
    """Whether a record's failure is its size (kafka-python's error, or librdkafka's)."""
    from kafka.errors import MessageSizeTooLargeError

    return isinstance(err, MessageSizeTooLargeError) or getattr(err, "too_large", False)


class _WriteFn(beam.DoFn):
    def __init__(self, cfg: _WriteConfig) -> None:
        self._cfg = cfg
        self._producer: Any = None
        self._pending: list[tuple[Any, str, OutgoingRecord, int | None]] = []
        self._written = Metrics.counter(_METRICS_NS, "records_written")
        self._truncated = Metrics.counter(_METRICS_NS, "records_truncated")
        self._truncated_bytes = Metrics.counter(_METRICS_NS, "bytes_truncated")
        self._dead_lettered = Metrics.counter(_METRICS_NS, "records_dead_lettered")
        self._skipped = Metrics.counter(_METRICS_NS, "records_skipped")
        self._resent = Metrics.counter(_METRICS_NS, "records_resent")
        self._producers_recreated = Metrics.counter(_METRICS_NS, "producers_recreated")
        self._replay_dropped = Metrics.counter(_METRICS_NS, "records_replay_dropped")

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        cfg = self._cfg
        settings = resolve_client_config(cfg.client_config)
        check_security("WriteToKafka", cfg.servers, settings)
        if cfg.client == "librdkafka":
            return RdProducer(
                cfg.servers, acks=cfg.acks, retries=cfg.retries,
                max_request_size=cfg.max_request_size, compression_type=cfg.compression_type,
                client_id=f"costream-write-{cfg.topic}", linger_ms=LINGER_MS,
                batch_size=min(BATCH_SIZE, cfg.max_request_size),
                delivery_timeout_s=cfg.flush_timeout_s, settings=settings,
            )  # fmt: skip
        return KafkaProducer(
            bootstrap_servers=cfg.servers,
            acks=cfg.acks,
            retries=cfg.retries,
            max_request_size=cfg.max_request_size,
            compression_type=cfg.compression_type,
            client_id=f"costream-write-{cfg.topic}",
            # send() blocks for metadata at most this long (kafka-python's default is 60 s).
            # kafka-python's linger_ms=0 sends each batch as soon as it has a record, so nearly
            # every send() opens a new batch and wakes the sender thread, and the wake-up's GIL
            # hand-over was most of WriteToKafka's ~330 us/record (issue 15); batches that fill
            # for 5 ms wake it a few times per bundle (benchmarks/bench_kafka.py --per-record).
            **{"max_block_ms": int(cfg.flush_timeout_s * 1000), "linger_ms": LINGER_MS,
               "batch_size": min(BATCH_SIZE, cfg.max_request_size),
               "partitioner": _keyed_partitioner(), **settings},
        )  # fmt: skip

    def setup(self) -> None:
        self._producer = self._new_producer()

    def start_bundle(self) -> None:
        self._pending = []

    def _too_large(self, rec: OutgoingRecord, size: int) -> str:
        return (
            f"WriteToKafka: a record for topic {self._cfg.topic!r} (key {_show_key(rec.key)}) is "
            f"{size} bytes serialized, above max_request_size={self._cfg.max_request_size}."
        )

    def _sized(self, rec: OutgoingRecord) -> OutgoingRecord | None:
        """``rec``, its truncated form, or ``None`` once it went to the dead-letter topic."""
        cfg = self._cfg
        if fits(rec, cfg.max_request_size):
            return rec
        size = record_size(rec)
        if cfg.oversize == "dead_letter":
            self._to_dead_letters(rec, self._too_large(rec, size), cfg.max_request_size)
            return None
        if cfg.oversize == "error":
            raise RecordTooLargeError(
                f"{self._too_large(rec, size)} Raise max_request_size together with the "
                "broker's message.max.bytes (or the topic's max.message.bytes), or make the "
                "record smaller, or give a dead_letter_topic; WriteDeadLetters truncates "
                "oversized dead letters instead."
            )
        try:
            cut = fit_dead_letter(rec, cfg.max_request_size)
        except RecordTooLargeError as err:
            self._skipped.inc()
            _LOG.error("WriteToKafka: skipped the record for topic %r (key %s): it cannot be "
                       "cut to fit: %s", cfg.topic, _show_key(rec.key), err)  # fmt: skip
            return None
        self._truncated.inc()
        self._truncated_bytes.inc(len(rec.value) - len(cut.value))
        _LOG.warning(
            "WriteToKafka: the record for topic %r (key %s) is %d bytes serialized, above "
            "max_request_size=%d; it was cut to fit (value %d -> %d bytes, headers %s, %s, %s).",
            cfg.topic, _show_key(rec.key), size, cfg.max_request_size, len(rec.value),
            len(cut.value), HEADER_TRUNCATED, HEADER_ORIGINAL_SIZE,
            HEADER_ORIGINAL_SHA256,
        )  # fmt: skip
        return cut

    def _to_dead_letters(self, rec: OutgoingRecord, reason: str, limit: int) -> None:
        """Queue ``rec`` as a dead letter (stage ``write``) cut to ``limit``, or count a skip."""
        cfg = self._cfg
        assert cfg.dead_letter_topic is not None
        try:
            dead = fit_dead_letter(
                dead_letter_record(rec.key, rec.value, rec.headers, reason, "write"), limit
            )
        except RecordTooLargeError as err:
            self._skipped.inc()
            _LOG.error("WriteToKafka: skipped a record for %r (%s); its dead letter does not fit "
                       "either: %s", cfg.topic, reason, err)  # fmt: skip
            return
        self._dead_lettered.inc()
        _LOG.warning("WriteToKafka: %s It went to the dead-letter topic %r.", reason,
                     cfg.dead_letter_topic)  # fmt: skip
        self._send(cfg.dead_letter_topic, dead, None)

    def _send(self, topic: str, rec: OutgoingRecord, ts_ms: int | None) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            future = self._producer.send(
                topic, value=rec.value, key=rec.key, headers=rec.headers, timestamp_ms=ts_ms
            )
        except KafkaTimeoutError as err:
            raise BrokerUnavailableError(
                f"WriteToKafka: no broker of {','.join(self._cfg.servers)} gave the metadata of "
                f"topic {topic!r} within {self._cfg.flush_timeout_s:g} s (flush_timeout_s): {err}"
            ) from err
        self._pending.append((future, topic, rec, ts_ms))

    def process(self, element: Any, ts: Timestamp = beam.DoFn.TimestampParam) -> None:
        out = as_outgoing(element, format=self._cfg.format, key=self._cfg.key)
        if is_replay(out.headers):
            # built from a record re-read to rebuild state: it was written before the restart
            self._replay_dropped.inc()
            return
        rec = self._sized(out)
        if rec is None:
            return
        if self._cfg.format is None and _kind(element) == "kafka":
            ts_ms: int | None = element.timestamp_ms
        elif MIN_TIMESTAMP < ts < MAX_TIMESTAMP and ts.micros >= 0:
            ts_ms = ts.micros // 1000  # keep the event time of what we write (e.g. capture time)
        else:
            ts_ms = None
        self._send(self._cfg.topic, rec, ts_ms)

    def finish_bundle(self) -> None:
        # The bundle succeeds only if every record was acknowledged. What the broker refused as
        # too large goes to the dead-letter topic when there is one; what failed otherwise (a
        # broker restart: disconnects, UnknownProducerId, timeouts) is resent with a new
        # producer, a few rounds; then raise, so the runner retries the bundle (and upstream
        # offsets are not committed). A resent record may be a duplicate (counted).
        cfg = self._cfg
        total = 0
        for round_ in range(_RESEND_ROUNDS + 1):
            self._flush()
            pending, self._pending = self._pending, []
            failed = [p for p in pending if not p[0].is_done or p[0].failed()]
            total += len(pending) - len(failed)
            too_large = [p for p in failed if p[0].is_done and _too_large(p[0].exception)]
            if too_large and cfg.dead_letter_topic is not None:
                failed = [p for p in failed if p not in too_large]
                if cfg.client == "kafka-python":
                    # kafka-python's sender treats the broker's MESSAGE_TOO_LARGE as fatal: it
                    # fails every later batch with the same error (found on Apache Kafka 4.1)
                    self._renew_producer()
                elif len(too_large) > 1:  # librdkafka: a batch is refused whole, for one record
                    too_large, through, others = self._alone(too_large)
                    total += through
                    failed += others
                for _, topic, rec, _ in too_large:
                    reason = (f"WriteToKafka: the broker refused a record of {record_size(rec)} "
                              f"bytes for topic {topic!r} as too large.")  # fmt: skip
                    self._to_dead_letters(rec, reason, record_size(rec) // 2)
            if not failed and not self._pending:
                break
            if not failed:
                continue  # flush the dead letters just queued
            first = failed[0][0].exception if failed[0][0].is_done else None
            if _too_large(first) or round_ == _RESEND_ROUNDS:
                self._pending = []
                raise self._failure(len(failed), len(pending), first)
            _LOG.warning("WriteToKafka: %d of %d records to %r were not acknowledged (%s); "
                         "resending them with a new producer.", len(failed), len(pending),
                         cfg.topic, first or "timed out")  # fmt: skip
            self._renew_producer()
            self._resent.inc(len(failed))
            for _, topic, rec, ts_ms in failed:
                self._send(topic, rec, ts_ms)
        self._written.inc(total)

    def _alone(self, entries: list) -> tuple[list, int, list]:
        """Send each record again in a batch of its own, waiting for each.

        librdkafka does not split a batch the broker refused as too large: every record of it
        fails. Returns the entries refused again (too large themselves), how many went through,
        and the entries that failed otherwise (resent as usual).
        """
        large, others, through = [], [], 0
        saved, self._pending = self._pending, []
        for _, topic, rec, ts_ms in entries:
            self._send(topic, rec, ts_ms)
            self._flush()
            entry = self._pending.pop()
            done, err = entry[0].is_done, entry[0].exception
            if done and err is None:
                through += 1
            elif done and _too_large(err):
                large.append(entry)
            else:
                others.append(entry)
        self._pending = saved
        return large, through, others

    def _renew_producer(self) -> None:
        self._producer.close(timeout=1)
        self._producer = self._new_producer()
        self._producers_recreated.inc()

    def _flush(self) -> None:
        """Wait for the acknowledgements; which records failed, their futures tell."""
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=self._cfg.flush_timeout_s)
        except KafkaError as err:
            # kafka-python 3 raises UnknownError("Future not done") from flush when the broker
            # refused a batch as too large and the batch was split and sent again: the
            # records' own futures still say how each one ended, so wait once more and read
            # them (what is still not done counts as failed and is resent).
            _LOG.debug("WriteToKafka: flush raised %r; waiting once more.", err)
            try:
                self._producer.flush(timeout=self._cfg.flush_timeout_s)
            except KafkaError:
                pass

    def _failure(self, failed: int, n: int, first: Any) -> Exception:
        cfg = self._cfg
        if first is None:
            return BrokerUnavailableError(
                f"WriteToKafka: no broker of {','.join(cfg.servers)} acknowledged {failed} of {n} "
                f"records to topic {cfg.topic!r} within flush_timeout_s={cfg.flush_timeout_s:g} "
                f"s ({_RESEND_ROUNDS} resends with a new producer included)."
            )
        hint = (
            " The broker refused a record as too large: its limit (message.max.bytes, or the "
            f"topic's max.message.bytes) is below max_request_size={cfg.max_request_size}; "
            "set max_request_size to the broker's limit, or give a dead_letter_topic."
            if _too_large(first)
            else ""
        )
        return RuntimeError(
            f"WriteToKafka: {failed} of {n} records to topic {cfg.topic!r} were not "
            f"acknowledged (first error: {first}).{hint}"
        )

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self._cfg.flush_timeout_s)
            self._producer = None
