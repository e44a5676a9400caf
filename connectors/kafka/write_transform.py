"""``WriteToKafka`` and ``WriteDeadLetters``: publish elements, a bundle at a time.

The public builders: they check their arguments (and, where the input's type says, its rows)
at construction and expand to one ``ParDo`` of the producer DoFn,
:mod:`costream.connectors.kafka.write` (sizing, acknowledgements, resends).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam

from costream.connectors.contract import DEFAULT_MAX_REQUEST_SIZE
from costream.connectors.kafka.config import (
    _WRITE_RESERVED,
    OVERSIZE_POLICIES,
    Oversize,
    _bootstrap_list,
    _check_client_config,
    _check_codec,
    _positive,
    _producer_config,
    _WriteConfig,
)
from costream.connectors.kafka.librdkafka import check_client
from costream.connectors.kafka.outgoing import _ROW_KINDS, FORMATS
from costream.connectors.kafka.write import _WriteFn

__all__ = ["WriteDeadLetters", "WriteToKafka"]


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
            set here, ``linger_ms`` is :data:`~costream.connectors.kafka.write.LINGER_MS`
            (5 ms: a record waits at most that long for its batch, or until ``finish_bundle``)
            and ``batch_size`` is :data:`~costream.connectors.kafka.write.BATCH_SIZE` or
            ``max_request_size``, the smaller.
        client: the producer: ``"kafka-python"`` (the default) or ``"librdkafka"``
            (``confluent_kafka``, C: ~2-3 us per record instead of kafka-python's ~30-80 with
            its sender thread, and the same contract: acknowledged bundles, resends, sizes,
            the key's partition as kafka-python's and Java's default partitioners pick it).
            With ``"librdkafka"``, ``client_config`` still takes kafka-python's names (security,
            SASL, SSL, timeouts, linger and batch size...), translated; one without a
            librdkafka counterpart is refused here.
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
        client: str = "kafka-python",
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
        check_client(client, cfg, consumer=False)
        self._fn = _WriteFn(
            _WriteConfig(servers, topic, acks, retries, float(flush_timeout_s), max_request_size,
                         oversize, cfg, compression_type, dead_letter_topic, format, key, client)
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
        client: str = "kafka-python",
    ) -> None:
        super().__init__(
            bootstrap_servers, topic, acks=acks, retries=retries,
            flush_timeout_s=flush_timeout_s, max_request_size=max_request_size,
            oversize="truncate", compression_type=compression_type, client_config=client_config,
            client=client,
        )  # fmt: skip
