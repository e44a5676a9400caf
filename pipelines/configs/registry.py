"""costream's Beam YAML types and the earlier type names.

Each type has a name, the Python PTransform it configures, its config dataclass, its outputs,
an example and the keys it refuses.

:data:`TYPES` is the one table every reader of the types uses: spec validation, the
YAML-facing transforms of ``providers.yaml`` and the reference ``docs/yaml.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from .kafka import (
    ReadFramesFromKafkaConfig,
    WriteDeadLettersToKafkaConfig,
    WriteDetectionsToKafkaConfig,
)
from .stages import ContinualInferenceConfig, DecodeFramesConfig, ExtractFeaturesConfig

__all__ = ["RENAMED", "TYPES", "YamlType"]


@dataclass(frozen=True)
class YamlType:
    """A costream Beam YAML type: its name, the Python PTransform behind it, its config and outputs."""

    name: str
    target: str
    """``module:Class`` of the Python PTransform the config's keys are handed to."""
    config: type
    outputs: tuple[tuple[str, str], ...]
    """(name, contents) of each output; the dead-letter one is named by ``error_handling``."""
    example: str
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Keys users bring from elsewhere, each with why it is not taken and what to write instead."""

    @property
    def dead_letters(self) -> bool:
        """Whether the type has a dead-letter output (and so requires ``error_handling``)."""
        return "error_handling" in {f.name for f in dataclasses.fields(self.config)}

    @property
    def python_name(self) -> str:
        """The Python class's name (``ReadFromKafka`` for ``ReadFramesFromKafka``)."""
        return self.target.rsplit(":", 1)[1]


_IO_DEAD_LETTERS = (
    "{name} writes the records it cannot {verb} to `dead_letter_topic` itself: the broker "
    "acknowledges each dead letter before {after}, so none is lost in a crash. Set "
    "`dead_letter_topic` instead of `error_handling`."
)
_DEAD_LETTER_OUTPUT = (
    "error_handling",
    "dead letters: the original key, value and headers plus `costream.error` (the reason) and "
    "`costream.stage`, for `WriteDeadLettersToKafka`",
)

TYPES: dict[str, YamlType] = {
    t.name: t
    for t in (
        YamlType(
            "ReadFramesFromKafka",
            "costream.connectors.kafka:ReadFromKafka",
            ReadFramesFromKafkaConfig,
            (
                (
                    "output",
                    "Kafka records (key, value, headers, topic, partition, offset, timestamp)",
                ),
            ),
            """\
- type: ReadFramesFromKafka
  config:
    bootstrap_servers: ${COSTREAM_BOOTSTRAP:-127.0.0.1:9092}
    topic: ${COSTREAM_INPUT_TOPIC:-costream.frames}
    group_id: costream-video
    start: committed
    dead_letter_topic: costream.dead-letter""",
            {
                "topics": "the key is `topic` (Beam's name); it takes one topic or a list.",
                "client_config": "the key is `consumer_config` (Beam's name).",
                "format": "costream reads records of its stream contract (docs/stream-contract.md) as they are; "
                "for JSON, Avro or Protobuf records use Beam's `ReadFromKafka`.",
                "schema": "costream reads records of its stream contract (docs/stream-contract.md) as they are; "
                "for JSON, Avro or Protobuf records use Beam's `ReadFromKafka`.",
                "auto_offset_reset_config": "costream's `start` (earliest, latest, committed or a "
                "timestamp) says where each partition starts.",
                "error_handling": _IO_DEAD_LETTERS.format(
                    name="ReadFramesFromKafka", verb="read", after="the offset moves on"
                ),
            },
        ),
        YamlType(
            "DecodeFrames",
            "costream.transforms.decode:DecodeFrames",
            DecodeFramesConfig,
            (
                ("output", "decoded frames (stream_id, frame_index, ts_ms, kind, data, ...)"),
                _DEAD_LETTER_OUTPUT,
            ),
            """\
- type: DecodeFrames
  input: ReadFramesFromKafka
  config:
    image_size: [224, 224]
    error_handling: {output: dead_letter}""",
        ),
        YamlType(
            "ExtractFeatures",
            "costream.transforms.features:ExtractFeatures",
            ExtractFeaturesConfig,
            (
                ("output", "feature records (stream_id, frame_index, ts_ms, features, ...)"),
                _DEAD_LETTER_OUTPUT,
            ),
            """\
- type: ExtractFeatures
  input: ReadFramesFromKafka
  config:
    backbone: resnet18_small
    weights: random
    batch_size: 32
    error_handling: {output: dead_letter}""",
        ),
        YamlType(
            "ContinualInference",
            "costream.transforms.inference:ContinualInference",
            ContinualInferenceConfig,
            (
                (
                    "output",
                    "detections, one per frame (stream_id, frame_index, ts_ms, warm, top_label, top_score, ...)",
                ),
                _DEAD_LETTER_OUTPUT,
            ),
            """\
- type: ContinualInference
  input: ExtractFeatures
  config:
    weights: pipelines/assets/demo_model.safetensors
    gap_policy: fill
    error_handling: {output: dead_letter}""",
        ),
        YamlType(
            "WriteDetectionsToKafka",
            "costream.connectors.kafka:WriteToKafka",
            WriteDetectionsToKafkaConfig,
            (),
            """\
- type: WriteDetectionsToKafka
  input: ContinualInference
  config:
    bootstrap_servers: ${COSTREAM_BOOTSTRAP:-127.0.0.1:9092}
    topic: costream.detections
    dead_letter_topic: costream.dead-letter""",
            {
                "client_config": "the key is `producer_config_updates` (Beam's name).",
                "schema": "rows carry their schema; `format: json` writes any of them.",
                "error_handling": _IO_DEAD_LETTERS.format(
                    name="WriteDetectionsToKafka", verb="publish", after="the bundle succeeds"
                ),
            },
        ),
        YamlType(
            "WriteDeadLettersToKafka",
            "costream.connectors.kafka:WriteDeadLetters",
            WriteDeadLettersToKafkaConfig,
            (),
            """\
- type: Flatten
  name: DeadLetters
  input: [ExtractFeatures.dead_letter, ContinualInference.dead_letter]
- type: WriteDeadLettersToKafka
  input: DeadLetters
  config:
    bootstrap_servers: ${COSTREAM_BOOTSTRAP:-127.0.0.1:9092}
    topic: costream.dead-letter""",
            {
                "client_config": "the key is `producer_config_updates` (Beam's name).",
                "error_handling": "dead letters that cannot be published whole are cut to fit "
                "and marked (`costream.truncated`), never refused; there is nothing to hand on.",
            },
        ),
    )
}
"""costream's YAML types by name, in pipeline order."""

RENAMED = {
    "WriteDeadLetters": "WriteDeadLettersToKafka",
    "ReadFromKafka": "ReadFramesFromKafka",
    "WriteToKafka": "WriteDetectionsToKafka",
}
"""Earlier costream type names -> today's. ``ReadFromKafka`` and ``WriteToKafka`` are Beam's own
(Java) Kafka transforms now; a spec that uses them with costream's keys gets told."""
