"""The Kafka clients on librdkafka (``client="librdkafka"``): the same contracts in C.

kafka-python builds every record batch in Python and hands it to a sender thread, which holds
the GIL for most of its work: measured in the features spec at 32 streams, its
``send`` and its sender thread were ~80 us of a frame's ~300 us on a 2-core machine; the same
records through ``confluent_kafka`` (librdkafka, bundled in its wheel) cost ~2-3 us each, the
batching and the network in librdkafka's own threads without the GIL.

:class:`RdProducer` is what :class:`~costream.connectors.kafka.write._WriteFn` needs of a
producer, nothing more: ``send`` returns a delivery handle with kafka-python's future's
``is_done`` / ``failed()`` / ``exception``, ``flush`` waits for acknowledgements, ``close``.
Settings: the writer's own (acks, retries, ``max_request_size``, codec, linger, batch size,
``flush_timeout_s`` as the delivery timeout) and Java's murmur2 partitioner for keyed records
(``murmur2_random``: the partition kafka-python's and Java's default partitioners pick), plus
``client_config`` in kafka-python's names, translated by :func:`rd_settings`; a setting with no
librdkafka counterpart is refused at construction (use ``client="kafka-python"`` for it).
"""

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CLIENTS", "RdProducer", "check_client", "rd_consumer_settings", "rd_settings"]

CLIENTS = ("kafka-python", "librdkafka")
"""Values of ``WriteToKafka(client=...)``."""

# kafka-python producer setting -> librdkafka property (values as they are, unless in _VALUES)
_NAMES = {
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "request_timeout_ms": "request.timeout.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "enable_idempotence": "enable.idempotence",
    "send_buffer_bytes": "socket.send.buffer.bytes",
    "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "buffer_memory": "queue.buffering.max.kbytes",
}
_PRODUCER_ONLY = {
    "linger_ms", "batch_size", "enable_idempotence", "max_in_flight_requests_per_connection",
    "buffer_memory",
}  # fmt: skip
_VALUES = {
    "ssl_check_hostname": lambda v: "https" if v else "none",
    "buffer_memory": lambda v: max(1, int(v) // 1024),
    "enable_idempotence": lambda v: bool(v),
}


# kafka-python consumer settings -> librdkafka properties, besides the connection ones above
_CONSUMER_NAMES = {
    **{k: v for k, v in _NAMES.items() if k not in _PRODUCER_ONLY},
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "isolation_level": "isolation.level",
    "check_crcs": "check.crcs",
}


def rd_settings(
    settings: Mapping[str, Any], names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The librdkafka properties of kafka-python producer ``settings`` (``ValueError``: none)."""
    names = _NAMES if names is None else names
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = names.get(key)
        if name is None:
            raise ValueError(
                f"client_config[{key!r}] has no librdkafka counterpart here; use "
                "client='kafka-python' for it (or leave it out)."
            )
        out[name] = _VALUES[key](value) if key in _VALUES else value
    return out


def rd_consumer_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The librdkafka properties of kafka-python consumer ``settings`` (``ValueError``: none)."""
    return rd_settings(settings, _CONSUMER_NAMES)


def check_client(client: str, client_config: Mapping[str, Any], *, consumer: bool) -> None:
    """Refuse, at construction, a ``client`` that is not one of :data:`CLIENTS`.

    And ``"librdkafka"`` without confluent-kafka installed, or with a ``client_config`` setting
    it has no name for (``consumer``: the reader's settings, else the writer's).
    """
    if client not in CLIENTS:
        raise ValueError(f"client={client!r} is not valid; use {' or '.join(map(repr, CLIENTS))}.")
    if client != "librdkafka":
        return
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "client='librdkafka' needs the confluent-kafka package (pip install "
            "'costream[kafka]'); or use client='kafka-python'."
        ) from err
    (rd_consumer_settings if consumer else rd_settings)(client_config)


class _Delivery:
    """One record's delivery, as kafka-python's future tells it: ``is_done``, ``exception``."""

    __slots__ = ("exception", "is_done")

    def __init__(self) -> None:
        self.is_done = False
        self.exception: Exception | None = None

    def failed(self) -> bool:
        return self.exception is not None

    def __call__(self, err: Any, _msg: Any) -> None:  # librdkafka's delivery report
        if err is not None:
            self.exception = DeliveryError(err)
        self.is_done = True


class DeliveryError(Exception):
    """A record librdkafka could not deliver; ``too_large`` when the size was the reason."""

    def __init__(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        super().__init__(f"{err.name()}: {err.str()}")
        self.code = err.code()
        self.too_large = self.code == KafkaError.MSG_SIZE_TOO_LARGE  # the broker's, or local


_POLL_EVERY = 64
"""The producer serves its delivery reports every this many sends (and in every flush)."""


class RdProducer:
    """A ``confluent_kafka.Producer`` with the calls the writer makes of kafka-python's."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        acks: Any,
        retries: int,
        max_request_size: int,
        compression_type: str | None,
        client_id: str,
        linger_ms: int,
        batch_size: int,
        delivery_timeout_s: float,
        settings: Mapping[str, Any],
    ) -> None:
        from confluent_kafka import KafkaException, Producer

        self._refused = KafkaException
        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(servers),
            "acks": str(acks),
            "retries": retries,
            "message.max.bytes": max(1000, max_request_size),
            "compression.type": compression_type or "none",
            "client.id": client_id,
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "partitioner": "murmur2_random",  # kafka-python's / Java's partition for a key
            # a record not acknowledged this long fails (the writer resends or raises)
            "message.timeout.ms": max(1, int(delivery_timeout_s * 1000)),
            **rd_settings(settings),
        }
        self.config = conf
        self._producer: Any = Producer(conf)
        self._sends = 0

    def send(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        timestamp_ms: int | None,
    ) -> _Delivery:
        delivery = _Delivery()
        producer = self._producer
        try:
            try:
                producer.produce(topic, value, key, headers=headers, timestamp=timestamp_ms or 0,
                                 on_delivery=delivery)  # fmt: skip
            except BufferError:  # the local queue is full: let deliveries drain it, once
                producer.poll(1.0)
                producer.produce(topic, value, key, headers=headers, timestamp=timestamp_ms or 0,
                                 on_delivery=delivery)  # fmt: skip
        except self._refused as err:  # refused locally (too large, unknown topic...)
            delivery(err.args[0], None)
        self._sends += 1
        if self._sends % _POLL_EVERY == 0:  # serve the delivery reports already in
            producer.poll(0)
        return delivery

    def flush(self, timeout: float) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
            self._producer = None  # librdkafka's threads stop with the last reference


class RdFetcher:
    """A librdkafka consumer of one partition, for the reader's polls (no group membership).

    ``read`` returns the records of ``start`` on as they are, ``(offset, timestamp or None, key,
    value, headers or None)`` tuples (header names ``str``). A header name that is not UTF-8
    makes confluent-kafka 2.16 raise, and not always where it is read (its ``headers()`` can
    return with the error still set, which Python raises at a later step): the caller then
    reads from ``start`` its own way and calls :meth:`reset`. ``probe`` says whether a broker
    answered lately (an offsets query, at most once a second), ``end_offset`` the partition's
    high watermark.
    """

    def __init__(
        self, servers: Sequence[str], topic: str, partition: int, group_id: str | None,
        client_id: str, fetch_max_wait_ms: int, settings: Mapping[str, Any],
    ) -> None:  # fmt: skip
        from confluent_kafka import Consumer

        conf: dict[str, Any] = {
            "bootstrap.servers": ",".join(servers),
            # librdkafka wants a group even for assigned partitions; nothing joins or commits it
            "group.id": group_id or f"costream-read-{topic}-{partition}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "client.id": client_id,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            # what it fetches ahead of the polls, per partition (librdkafka's default is 64 MB)
            "queued.max.messages.kbytes": 16 << 10,
            **rd_consumer_settings(settings),
        }
        self.config = conf
        self._topic, self._partition = topic, partition
        self._consumer: Any = Consumer(conf)
        self._next: int | None = None  # the offset the consumer fetches next
        self._probed = 0.0

    def _tp(self, offset: int = -1001) -> Any:
        from confluent_kafka import TopicPartition

        return TopicPartition(self._topic, self._partition, offset)

    def read(self, start: int, max_records: int, timeout_ms: int) -> list[tuple]:
        if self._next != start:
            self._consumer.assign([self._tp(start)])  # assign at the offset: no seek race
            self._next = start
        first = self._consumer.poll(timeout_ms / 1000)  # returns as soon as one record is in
        if first is None:
            return []
        # consume() waits for a whole batch or its timeout: with 0 it takes what is queued
        msgs = [first, *self._consumer.consume(max_records - 1, 0)] if max_records > 1 else [first]
        out = []
        for m in msgs:
            if m.error() is not None:
                continue  # partition EOF, transient broker errors: librdkafka retries them
            ts_type, ts = m.timestamp()
            out.append((m.offset(), ts if ts_type else None, m.key(), m.value(), m.headers()))
        if out:
            self._next = out[-1][0] + 1
        return out

    def reset(self) -> None:
        """Forget the position: the next read assigns the partition at its start again."""
        self._next = None

    def probe(self, timeout_s: float = 1.0) -> bool:
        now = time.monotonic()
        if now - self._probed < 1.0:
            return True
        try:
            self._consumer.get_watermark_offsets(self._tp(), timeout=timeout_s, cached=False)
        except Exception:  # no broker answered in time
            return False
        self._probed = now
        return True

    def end_offset(self, timeout_s: float = 10.0) -> int:
        return int(self._consumer.get_watermark_offsets(self._tp(), timeout=timeout_s)[1])

    def close(self) -> None:
        self._consumer.close()
