"""The config dataclasses of costream's Kafka types: the frame reader and the two writers.

The YAML keys are Beam's where Beam's own Kafka transforms mean the same thing (``topic``,
``consumer_config``, ``producer_config_updates``, ``format``); each maps to the Python keyword in
its ``python`` metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .fields import KAFKA_SETTINGS_DOC, MIB, kafka_names
from .fields import key as _key

__all__ = [
    "ReadFramesFromKafkaConfig",
    "WriteDeadLettersToKafkaConfig",
    "WriteDetectionsToKafkaConfig",
]


@dataclass(frozen=True, kw_only=True)
class ReadFramesFromKafkaConfig:
    """Read records of costream's stream contract (one frame or chunk each) from Kafka."""

    bootstrap_servers: str | list[str] = _key(
        "Kafka brokers: `host:port`, comma-separated, or a list."
    )
    topic: str | list[str] = _key("The topic to read, or a list of topics.", python="topics")
    start: Literal["earliest", "latest", "committed"] | int = _key(
        "Where each partition starts: `earliest`, `latest`, `committed` (the group's committed "
        "offsets, earliest where it has none; needs `group_id`) or a timestamp in ms.",
        "earliest",
    )
    group_id: str | None = _key(
        "Consumer group whose offsets are read (`start: committed`) and committed after each "
        "finished bundle; without it nothing is committed.",
        None,
    )
    partitions: list[int] | None = _key(
        "Partition numbers to read (of every topic); null: all.", None
    )
    max_records: int | None = _key("Read at most this many offsets per partition.", None)
    stop_after_idle_s: float | None = _key(
        "End a partition's read after this many seconds without a record; the pipeline ends "
        "when every partition has ended (replays, tests). null: never.",
        None,
    )
    idle_partition_s: float | None = _key(
        "After this many quiet seconds a partition's watermark follows the wall clock so it does "
        "not hold back the others; null: never (replays of old data).",
        10.0,
    )
    max_records_per_bundle: int = _key(
        "Records per partition per bundle at most; a partition's part of a bundle also ends "
        "once the reader has caught up with the broker.",
        500,
    )
    max_bundle_s: float = _key("Wall-clock seconds a bundle may spend on one partition.", 1.0)
    poll_timeout_ms: int = _key(
        "How long one poll waits on a quiet partition, until the bundle has read a record.", 100
    )
    dead_letter_topic: str | None = _key(
        "Where records that cannot be read at all go (stage `read`: a header name that is not "
        "UTF-8, a timestamp out of range), acknowledged before the offset moves on. Without it "
        "such records are skipped, logged and counted (`records_skipped`).",
        None,
    )
    dead_letter_max_bytes: int = _key("Largest dead letter the reader writes.", MIB)
    broker_timeout_s: float = _key(
        "A partition that reaches no broker for this long fails the read; shorter outages are "
        "waited out.",
        60.0,
    )
    client: Literal["kafka-python", "librdkafka"] = _key(
        "Who fetches and parses the records: `kafka-python`, or `librdkafka` (confluent-kafka, "
        "C; commits and checks stay kafka-python's; `consumer_config` keeps kafka-python's "
        "names).",
        "kafka-python",
    )
    consumer_config: dict[str, Any] | None = _key(
        KAFKA_SETTINGS_DOC.format(client="KafkaConsumer"),
        None,
        python="client_config",
        convert=kafka_names,
    )
    warm_restart_frames: int = _key(
        "With `start: committed`, re-read enough records before each partition's committed "
        "offset to rebuild this many frames of every stream's state, emitting nothing for them "
        "(use the model's window n); 0: none.",
        0,
    )
    warm_restart_max_records: int = _key(
        "Scan at most this many records back per partition.", 100_000
    )


@dataclass(frozen=True, kw_only=True)
class _WriteConfig:
    bootstrap_servers: str | list[str] = _key(
        "Kafka brokers: `host:port`, comma-separated, or a list."
    )
    topic: str = _key("The topic to write (must exist where topics are not auto-created).")
    acks: Literal["all", 0, 1, -1] = _key("Acknowledgements the producer waits for.", "all")
    retries: int = _key("Producer retries per record on retriable errors.", 5)
    flush_timeout_s: float = _key("How long the end of a bundle waits for acknowledgements.", 60.0)
    max_request_size: int = _key(
        "Largest serialized record in bytes; keep it at or below the broker's `message.max.bytes`.",
        MIB,
    )
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = _key(
        "Codec of the record batches written; null: none.", None
    )
    client: Literal["kafka-python", "librdkafka"] = _key(
        "The producer: `kafka-python`, or `librdkafka` (confluent-kafka, C: a tenth of the CPU "
        "per record; `producer_config_updates` keep kafka-python's names).",
        "kafka-python",
    )
    producer_config_updates: dict[str, Any] | None = _key(
        KAFKA_SETTINGS_DOC.format(client="KafkaProducer"),
        None,
        python="client_config",
        convert=kafka_names,
    )


@dataclass(frozen=True, kw_only=True)
class WriteDetectionsToKafkaConfig(_WriteConfig):
    """Publish detections (or any schema'd rows) to a topic; a bundle ends once they are acknowledged."""

    format: str | None = _key(
        "How elements become record values: null (the default) writes detection rows as "
        "costream's detection JSON (docs/stream-contract.md) and records as they are; `json` writes any "
        "schema'd row as one JSON object (Beam's `format`; `JSON` is accepted).",
        None,
        convert=lambda v: None if v is None else v.lower(),
    )
    key: str | None = _key(
        "With `format: json`, the field whose value becomes the record key (text as UTF-8); "
        "null: records without a key.",
        None,
    )
    oversize: Literal["error", "truncate", "dead_letter"] | None = _key(
        "What a record above `max_request_size` gets; null: `dead_letter` with a "
        "`dead_letter_topic`, else `error` (the bundle fails, nothing is dropped).",
        None,
    )
    dead_letter_topic: str | None = _key(
        "Where a record that cannot be published goes (stage `write`, cut to fit): one above "
        "`max_request_size` or refused by the broker as too large.",
        None,
    )


@dataclass(frozen=True, kw_only=True)
class WriteDeadLettersToKafkaConfig(_WriteConfig):
    """Publish dead letters to a topic; one too large is cut to fit and marked, never refused."""
