"""``WriteToKafka`` and ``WriteDeadLetters``: publish elements, a bundle at a time.

The writer produces elements and flushes in ``finish_bundle``, so a bundle succeeds only once
the broker acknowledged it. It sizes every record first
(:mod:`costream.connectors.contract.sizing`): one above ``max_request_size`` is an error,
except in ``WriteDeadLetters``, which cuts the value to fit and says so in headers (a dead
letter is the original record plus its reason, so an input near the limit would otherwise
never get out).
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from costream.connectors.contract import (
    DEFAULT_MAX_REQUEST_SIZE,
    HEADER_ORIGINAL_SHA256,
    HEADER_ORIGINAL_SIZE,
    HEADER_TRUNCATED,
    REPLAY_HEADER,
    OutgoingRecord,
    RecordTooLargeError,
    dead_letter_record,
    fit_dead_letter,
    record_size,
)
from costream.connectors.kafka.config import (
    _METRICS_NS,
    _WRITE_RESERVED,
    OVERSIZE_POLICIES,
    Oversize,
    _bootstrap_list,
    _check_client_config,
    _check_codec,
    _positive,
    _producer_config,
    _WriteConfig,
    resolve_client_config,
)
from costream.connectors.kafka.errors import BrokerUnavailableError
from costream.connectors.kafka.outgoing import _ROW_KINDS, FORMATS, _kind, as_outgoing
from costream.connectors.kafka.security import check_security

__all__ = ["WriteDeadLetters", "WriteToKafka"]

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
        size = record_size(rec)
        if size <= cfg.max_request_size:
            return rec
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
        if any(k == REPLAY_HEADER for k, _ in out.headers):
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
        from kafka.errors import MessageSizeTooLargeError

        # The bundle succeeds only if every record was acknowledged. What the broker refused as
        # too large goes to the dead-letter topic when there is one; what failed otherwise (a
        # broker restart: disconnects, UnknownProducerId, timeouts) is resent with a new
        # producer, a few rounds; then raise, so the runner retries the bundle (and upstream
        # offsets are not committed). A resent record may be a duplicate (counted).
        cfg = self._cfg
        total = 0
        for round_ in range(_RESEND_ROUNDS + 1):
            self._producer.flush(timeout=cfg.flush_timeout_s)
            pending, self._pending = self._pending, []
            failed = [p for p in pending if not p[0].is_done or p[0].failed()]
            total += len(pending) - len(failed)
            too_large = [p for p in failed
                         if p[0].is_done and isinstance(p[0].exception, MessageSizeTooLargeError)]  # fmt: skip
            if too_large and cfg.dead_letter_topic is not None:
                for _, topic, rec, _ in too_large:
                    reason = (f"WriteToKafka: the broker refused a record of {record_size(rec)} "
                              f"bytes for topic {topic!r} as too large.")  # fmt: skip
                    self._to_dead_letters(rec, reason, record_size(rec) // 2)
                failed = [p for p in failed if p not in too_large]
            if not failed and not self._pending:
                break
            if not failed:
                continue  # flush the dead letters just queued
            first = failed[0][0].exception if failed[0][0].is_done else None
            if isinstance(first, MessageSizeTooLargeError) or round_ == _RESEND_ROUNDS:
                self._pending = []
                raise self._failure(len(failed), len(pending), first)
            _LOG.warning("WriteToKafka: %d of %d records to %r were not acknowledged (%s); "
                         "resending them with a new producer.", len(failed), len(pending),
                         cfg.topic, first or "timed out")  # fmt: skip
            self._producer.close(timeout=1)
            self._producer = self._new_producer()
            self._producers_recreated.inc()
            self._resent.inc(len(failed))
            for _, topic, rec, ts_ms in failed:
                self._send(topic, rec, ts_ms)
        self._written.inc(total)

    def _failure(self, failed: int, n: int, first: Any) -> Exception:
        from kafka.errors import MessageSizeTooLargeError

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
            if isinstance(first, MessageSizeTooLargeError)
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


class WriteToKafka(beam.PTransform):
    """Publish elements to one topic; a bundle succeeds only once the broker acknowledged it.

    Elements (see :func:`as_outgoing` for exactly what each becomes):

    * ``format=None`` (the default): detection rows (``ContinualInference``'s output: the
      ``docs/stream-contract.md`` detection JSON, key = stream id), dead-letter rows (the original record
      plus ``costream.error`` / ``costream.stage``), :class:`OutgoingRecord`, ``KafkaRecord``,
      ``(key, value)`` or ``(key, value, headers)``. Any other schema'd row is refused, at
      construction when the input's type says so, else at run time, asking for a ``format``.
    * ``format="json"``: any schema'd row (``beam.Row``, a NamedTuple with annotations, what
      Beam YAML's ``MapToFields`` / ``Combine`` / ``Sql`` produce) as one JSON object; ``key``
      names the field whose value is the record key.

    The record timestamp is the ``KafkaRecord`` timestamp or else the element's event time
    (when it has a real one); partitions follow the key.

    Every record is sized (:func:`~costream.connectors.contract.sizing.record_size`) before it is sent. One above
    ``max_request_size`` raises :class:`RecordTooLargeError` (``oversize="error"``, the
    default: the bundle fails, nothing is dropped) or is published with its value cut to fit and
    marked by ``costream.truncated``, ``costream.original_size`` and
    ``costream.original_sha256`` (``oversize="truncate"``, what :class:`WriteDeadLetters` does;
    logged and counted in the ``costream.kafka`` metrics ``records_truncated`` and
    ``bytes_truncated``).

    Args:
        bootstrap_servers: ``"host:port"``, comma-separated, or a list.
        topic: destination topic (must exist on brokers that do not auto-create topics).
        acks: ``0``, ``1`` or ``"all"``.
        retries: producer retries per record on retriable errors.
        flush_timeout_s: how long ``finish_bundle`` waits for acknowledgements.
        max_request_size: largest serialized record in bytes (kafka-python's producer setting,
            default 1 MiB). Keep it at or below the broker's ``message.max.bytes`` (Kafka's
            default is 1 MiB + 12 bytes) and the topic's ``max.message.bytes``.
        oversize: what a record above ``max_request_size`` gets: ``"error"`` (the default
            without a dead-letter topic), ``"truncate"``, or ``"dead_letter"`` (the default
            with one).
        dead_letter_topic: where a record that cannot be published goes, as a dead letter
            (stage ``write``, cut to fit with
            :func:`~costream.connectors.contract.sizing.fit_dead_letter`): one above
            ``max_request_size``, or one the broker refused as too large (then cut to half its
            size). A dead letter that cannot be cut to fit is skipped, logged and counted
            (``records_skipped``).
        compression_type: ``None`` (uncompressed) or one of ``COMPRESSION_TYPES``: the codec of
            the record batches written. Sizes are checked uncompressed (an upper bound).
        client_config: extra kafka-python ``KafkaProducer`` settings, merged last;
            ``{"from_env": "NAME"}`` values are read from the worker's environment. SASL/SSL
            failures raise :class:`KafkaSecurityError` as in :class:`ReadFromKafka`. Unless
            set here, ``linger_ms`` is :data:`LINGER_MS` (5 ms: a record waits at most that
            long for its batch, or until ``finish_bundle``) and ``batch_size`` is
            :data:`BATCH_SIZE` or ``max_request_size``, the smaller.
        format: ``None`` (detections, dead letters and records, as above) or ``"json"``
            (:data:`FORMATS`): rows as JSON objects.
        key: with ``format="json"``, the field whose value is the record key (text as UTF-8,
            bytes as they are); ``None`` writes records without a key.

    Example:
        >>> _ = (detections  # doctest: +SKIP
        ...      | beam.Filter(lambda d: d.warm and d.top_score > 0.9)
        ...      | WriteToKafka("127.0.0.1:9092", "alerts"))
        >>> _ = per_minute_counts | WriteToKafka(  # doctest: +SKIP
        ...     "127.0.0.1:9092", "counts", format="json", key="stream_id")
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        acks: int | str = "all",
        retries: int = 5,
        flush_timeout_s: float = 60.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        oversize: Oversize | None = None,
        compression_type: str | None = None,
        dead_letter_topic: str | None = None,
        client_config: Mapping[str, Any] | None = None,
        format: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__()
        if format is not None and format not in FORMATS:
            raise ValueError(
                f"format={format!r} is not valid; use None (detections, dead letters and "
                f"records) or one of {', '.join(map(repr, FORMATS))}."
            )
        if key is not None and (format is None or not isinstance(key, str) or not key):
            raise ValueError(
                f"key={key!r} names the row field that becomes the record key; it takes a field "
                "name and format='json' (detections are keyed by stream id already)."
            )
        if oversize is None:
            oversize = "error" if dead_letter_topic is None else "dead_letter"
        if oversize == "dead_letter" and not dead_letter_topic:
            raise ValueError("oversize='dead_letter' needs a dead_letter_topic.")
        servers = _bootstrap_list(bootstrap_servers)
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}.")
        if acks not in (0, 1, "all", -1):
            raise ValueError(f"acks={acks!r} is not valid; use 0, 1 or 'all'.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}.")
        _positive("flush_timeout_s", flush_timeout_s, optional=False)
        _positive("max_request_size", max_request_size, integer=True, optional=False)
        if oversize not in OVERSIZE_POLICIES:
            raise ValueError(
                f"oversize={oversize!r} is not valid; use {' or '.join(map(repr, OVERSIZE_POLICIES))}."
            )
        _check_codec(compression_type)
        cfg = _check_client_config(client_config, _producer_config(), _WRITE_RESERVED)
        self._fn = _WriteFn(
            _WriteConfig(servers, topic, acks, retries, float(flush_timeout_s), max_request_size,
                         oversize, cfg, compression_type, dead_letter_topic, format, key)
        )  # fmt: skip

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        _check_input_rows(pcoll.element_type, self._fn._cfg)
        return pcoll | "Produce" >> beam.ParDo(self._fn)


def _schema_fields(element_type: Any) -> list[str] | None:
    """The field names of a schema'd element type, or None (``Any``, unions, plain types)."""
    from apache_beam.typehints import schemas

    try:
        return [name for name, _ in schemas.named_fields_from_element_type(element_type)]
    except (TypeError, ValueError, KeyError, IndexError):
        return None


def _check_input_rows(element_type: Any, cfg: _WriteConfig) -> None:
    """Refuse, at construction, rows the writer cannot write with its ``format`` and ``key``."""
    fields = _schema_fields(element_type)
    if fields is None:
        return  # checked per element
    if cfg.format is None and frozenset(fields) not in _ROW_KINDS:
        raise ValueError(
            f"WriteToKafka to {cfg.topic!r}: the input rows have fields ({', '.join(fields)}), "
            "which are not a detection, dead letter or record; give format='json' to write "
            "them as JSON objects (and key=FIELD for the record key)."
        )
    if cfg.key is not None and cfg.key not in fields:
        raise ValueError(
            f"WriteToKafka to {cfg.topic!r}: key={cfg.key!r} is not a field of the input rows; "
            f"their fields are {', '.join(fields)}."
        )


class WriteDeadLetters(WriteToKafka):
    """:class:`WriteToKafka` for dead letters: an oversized record is truncated, never refused.

    Elements: :class:`~costream.connectors.contract.DeadLetter` rows (every costream
    ``dead_letter`` output), each published as
    :func:`~costream.connectors.contract.dead_letter_to_record`, or records as in
    :class:`WriteToKafka`. A dead letter is the original record plus ``costream.error`` /
    ``costream.stage``, so an input near the broker's limit no longer fits once the reason is
    added. Refusing it would fail the bundle again on every retry; this writer publishes it
    with the value cut to fit and
    ``costream.truncated`` = ``true``, ``costream.original_size`` and ``costream.original_sha256``
    (the whole value's length and SHA-256), logs a warning and counts it (``records_truncated``,
    ``bytes_truncated``). Only a record whose key and headers alone exceed ``max_request_size``
    raises :class:`RecordTooLargeError`. Arguments as :class:`WriteToKafka`.

    Example (what happens to a dead letter of a 1 MiB input, see
    :func:`~costream.connectors.contract.sizing.fit_record`):
        >>> from costream.connectors.contract import fit_record
        >>> big = dead_letter_record(b"mic", b"x" * (1 << 20), [], "too large", "decode")
        >>> cut = fit_record(big, DEFAULT_MAX_REQUEST_SIZE)
        >>> len(cut.value), [(k, v) for k, v in cut.headers if k == "costream.original_size"]
        (1048293, [('costream.original_size', b'1048576')])
        >>> _ = dead_letters | WriteDeadLetters("127.0.0.1:9092", "dlq")  # doctest: +SKIP
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        acks: int | str = "all",
        retries: int = 5,
        flush_timeout_s: float = 60.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        compression_type: str | None = None,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap_servers, topic, acks=acks, retries=retries,
            flush_timeout_s=flush_timeout_s, max_request_size=max_request_size,
            oversize="truncate", compression_type=compression_type, client_config=client_config,
        )  # fmt: skip
