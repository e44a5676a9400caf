"""The Kafka connector for Beam in pure Python (kafka-python), usable on every runner.

A public builder and a private worker, one concept per module:

- :mod:`~costream.connectors.kafka.read_transform`: ``ReadFromKafka`` (argument checks, the
  expansion) over :mod:`~costream.connectors.kafka.read` (the splittable DoFn, its delivery
  contract), on top of :mod:`~costream.connectors.kafka.offsets` (where a read starts),
  :mod:`~costream.connectors.kafka.partition` (the per-partition worker),
  :mod:`~costream.connectors.kafka.restriction` (offset ranges and watermarks) and
  :mod:`~costream.connectors.kafka.raw` (batches kafka-python cannot parse);
- :mod:`~costream.connectors.kafka.write_transform`: ``WriteToKafka`` and ``WriteDeadLetters``
  over :mod:`~costream.connectors.kafka.write` (the producer DoFn: sizing, acknowledgements,
  resends, the producer's settings), with :mod:`~costream.connectors.kafka.outgoing` (what
  each element becomes on the wire);
- :mod:`~costream.connectors.kafka.records`: ``KafkaRecord`` and the Beam coders (registered on
  import of this package);
- :mod:`~costream.connectors.kafka.config` and :mod:`~costream.connectors.kafka.security`:
  argument and ``client_config`` validation, the TLS / SASL check;
- :mod:`~costream.connectors.kafka.errors`: what a read or write fails with.

The records themselves (headers, detections, dead letters, sizing) are the stream contract,
:mod:`costream.connectors.contract`.

Example:
    >>> import apache_beam as beam  # doctest: +SKIP
    >>> with beam.Pipeline(runner="FnApiRunner") as p:  # doctest: +SKIP
    ...     _ = (
    ...         p
    ...         | ReadFromKafka("127.0.0.1:9092", "frames", start="earliest", stop_after_idle_s=5)
    ...         | WriteToKafka("127.0.0.1:9092", "frames-copy")
    ...     )
"""

from costream.connectors.kafka.config import (
    COMPRESSION_TYPES,
    OVERSIZE_POLICIES,
    START_POSITIONS,
    resolve_client_config,
)
from costream.connectors.kafka.errors import (
    BrokerUnavailableError,
    KafkaSecurityError,
    PartitionResetError,
)
from costream.connectors.kafka.librdkafka import CLIENTS
from costream.connectors.kafka.outgoing import FORMATS, as_outgoing
from costream.connectors.kafka.read_transform import ReadFromKafka
from costream.connectors.kafka.records import KafkaRecord, OutgoingRecordCoder
from costream.connectors.kafka.security import SECURITY_CHECK_TIMEOUT_S, check_security
from costream.connectors.kafka.write_transform import WriteDeadLetters, WriteToKafka

__all__ = [
    "CLIENTS",
    "COMPRESSION_TYPES",
    "FORMATS",
    "OVERSIZE_POLICIES",
    "SECURITY_CHECK_TIMEOUT_S",
    "START_POSITIONS",
    "BrokerUnavailableError",
    "KafkaRecord",
    "KafkaSecurityError",
    "OutgoingRecordCoder",
    "PartitionResetError",
    "ReadFromKafka",
    "WriteDeadLetters",
    "WriteToKafka",
    "as_outgoing",
    "check_security",
    "resolve_client_config",
]
