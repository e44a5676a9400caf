"""costream.connectors: Kafka IO for Beam, the stream contract, media readers, local broker.

Import the submodules you need; this package re-exports the main entry points lazily so that
``import costream.connectors`` stays cheap (Beam, PyAV and OpenCV load on first use):

- :mod:`~costream.connectors.kafka`: ``ReadFromKafka``, ``WriteToKafka``, ``WriteDeadLetters``,
  ``KafkaRecord``, and the errors a pipeline may fail with (``KafkaSecurityError``,
  ``PartitionResetError``, ``BrokerUnavailableError``);
- :mod:`~costream.connectors.contract`: header names, content types, ``decode_frame`` and
  friends, the ``CodecError`` hierarchy, detections, dead-letter records and record sizing
  (``RecordTooLargeError``), with neither Beam nor torch imported;
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
    "ReadFromKafka": "kafka",
    "WriteToKafka": "kafka",
    "WriteDeadLetters": "kafka",
    "RecordTooLargeError": "contract",
    "KafkaRecord": "kafka",
    "KafkaSecurityError": "kafka",
    "PartitionResetError": "kafka",
    "BrokerUnavailableError": "kafka",
    "OutgoingRecord": "contract",
    "CodecError": "contract",
    "Frame": "contract",
    "Detection": "contract",
    "decode_frame": "contract",
    "decode_payload": "contract",
    "decode_detection": "contract",
    "encode_detection": "contract",
    "make_detection": "contract",
    "dead_letter_record": "contract",
    "frame_record": "contract",
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
