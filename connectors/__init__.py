"""costream.connectors: Kafka IO for Beam, stream-contract codecs, media readers, local broker.

Import the submodules you need; this package re-exports the main entry points lazily so that
``import costream.connectors`` stays cheap (Beam, PyAV and OpenCV load on first use):

- :mod:`~costream.connectors.kafka_io`: ``ReadFromKafka``, ``WriteToKafka``, ``WriteDeadLetters``,
  ``KafkaRecord``, and the errors a pipeline may fail with (``KafkaSecurityError``,
  ``PartitionResetError``, ``BrokerUnavailableError``);
- :mod:`~costream.connectors.codecs`: header names, content types, ``decode_frame`` and friends,
  the ``CodecError`` hierarchy, detections and dead-letter records;
- :mod:`~costream.connectors.media` and :mod:`~costream.connectors.synthetic`: files and
  generated media to frames / PCM chunks;
- :mod:`~costream.connectors.sources`: any source to publishable records;
- :mod:`~costream.connectors.broker`: ``EmbeddedBroker`` (tansu), ``KafkaBroker`` (Apache Kafka,
  with ``sasl_plain_properties`` / ``ssl_pem_properties`` for a secured one), ``make_broker``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReadFromKafka": "kafka_io",
    "WriteToKafka": "kafka_io",
    "WriteDeadLetters": "kafka_io",
    "RecordTooLargeError": "kafka_io",
    "KafkaRecord": "kafka_io",
    "KafkaSecurityError": "kafka_io",
    "PartitionResetError": "kafka_io",
    "BrokerUnavailableError": "kafka_io",
    "OutgoingRecord": "codecs",
    "CodecError": "codecs",
    "Frame": "codecs",
    "Detection": "codecs",
    "decode_frame": "codecs",
    "decode_payload": "codecs",
    "decode_detection": "codecs",
    "encode_detection": "codecs",
    "make_detection": "codecs",
    "dead_letter_record": "codecs",
    "frame_record": "codecs",
    "EmbeddedBroker": "broker",
    "KafkaBroker": "broker",
    "BrokerError": "broker",
    "make_broker": "broker",
    "sasl_plain_properties": "broker",
    "ssl_pem_properties": "broker",
    "read_video_frames": "media",
    "read_audio_chunks": "media",
    "synthetic_video": "synthetic",
    "synthetic_audio": "synthetic",
    "open_source": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'costream.connectors' has no attribute {name!r}")
    return getattr(importlib.import_module(f"costream.connectors.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)
