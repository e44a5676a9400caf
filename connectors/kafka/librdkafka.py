"""WriteToKafka's producer on librdkafka (``client="librdkafka"``): the same contract in C.

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

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CLIENTS", "RdProducer", "rd_settings"]

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
_VALUES = {
    "ssl_check_hostname": lambda v: "https" if v else "none",
    "buffer_memory": lambda v: max(1, int(v) // 1024),
    "enable_idempotence": lambda v: bool(v),
}


def rd_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The librdkafka properties of kafka-python producer ``settings`` (``ValueError``: none)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = _NAMES.get(key)
        if name is None:
            raise ValueError(
                f"client_config[{key!r}] has no librdkafka counterpart here; write with "
                "client='kafka-python' to use it (or leave it out)."
            )
        out[name] = _VALUES[key](value) if key in _VALUES else value
    return out


def check_available() -> None:
    """Raise ``ValueError`` when ``confluent_kafka`` (the librdkafka client) is not installed."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as err:
        raise ValueError(
            "client='librdkafka' needs the confluent-kafka package (pip install "
            "'costream[kafka]'); or use client='kafka-python'."
        ) from err


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
        from confluent_kafka import Producer

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
        produce = self._producer.produce
        try:
            produce(topic, value, key, headers=headers, timestamp=timestamp_ms or 0,
                    on_delivery=delivery)  # fmt: skip
        except BufferError:  # the local queue is full: let deliveries drain it, once
            self._producer.poll(1.0)
            produce(topic, value, key, headers=headers, timestamp=timestamp_ms or 0,
                    on_delivery=delivery)  # fmt: skip
        except Exception as err:  # refused locally (too large, unknown topic...): a failure
            from confluent_kafka import KafkaException

            if not isinstance(err, KafkaException):
                raise
            delivery(err.args[0], None)
        self._producer.poll(0)  # serve the delivery reports already in
        return delivery

    def flush(self, timeout: float) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
            self._producer = None  # librdkafka's threads stop with the last reference
