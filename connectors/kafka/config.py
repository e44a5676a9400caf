"""Configuration of the Kafka reader and writer: validation, ``client_config``, codecs.

The public transforms validate every argument here, in their constructors; ``client_config``
(kafka-python settings merged last) is checked against kafka-python's own setting names, and
its ``{"from_env": "NAME"}`` values are resolved on the worker (:func:`resolve_client_config`).
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from costream.connectors.contract import DEFAULT_MAX_REQUEST_SIZE

__all__ = [
    "COMPRESSION_TYPES",
    "OVERSIZE_POLICIES",
    "START_POSITIONS",
    "Oversize",
    "resolve_client_config",
]


START_POSITIONS = ("earliest", "latest", "committed")
"""Named start positions; an ``int`` start is a timestamp in ms since the epoch."""


Oversize = Literal["error", "truncate", "dead_letter"]
OVERSIZE_POLICIES = ("error", "truncate", "dead_letter")
_METRICS_NS = "costream.kafka"


def _bootstrap_list(bootstrap_servers: str | Sequence[str]) -> list[str]:
    servers = (
        [s.strip() for s in bootstrap_servers.split(",")]
        if isinstance(bootstrap_servers, str)
        else list(bootstrap_servers)
    )
    if not servers or not all(isinstance(s, str) and ":" in s and s.strip() for s in servers):
        raise ValueError(
            f"bootstrap_servers must be 'host:port' or a list of them, got {bootstrap_servers!r}."
        )
    return servers


def _check_client_config(
    client_config: Mapping[str, Any] | None, known: Mapping[str, Any], reserved: Mapping[str, str]
) -> dict[str, Any]:
    """Validate keys against kafka-python's config names; refuse the ones this transform owns."""
    cfg = dict(client_config or {})
    for key, value in cfg.items():
        if key in reserved:
            raise ValueError(f"client_config[{key!r}] is not allowed here; {reserved[key]}")
        if key not in known:
            close = sorted(k for k in known if key.split("_")[0] in k)[:6]
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise ValueError(
                f"client_config has the unknown kafka-python setting {key!r}.{hint} "
                "See the KafkaConsumer/KafkaProducer documentation for valid names."
            )
        if isinstance(value, Mapping) and set(value) != {"from_env"}:
            raise ValueError(
                f"client_config[{key!r}] is a mapping; the only mapping allowed is "
                "{'from_env': 'VARIABLE'}, which reads the value from an environment variable."
            )
    return cfg


def resolve_client_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Replace ``{"from_env": "NAME"}`` values by ``os.environ["NAME"]`` (on the worker).

    Secrets such as ``sasl_plain_password`` thus never need to appear in a spec or be pickled
    into the pipeline graph.
    """
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            name = value["from_env"]
            if name not in os.environ:
                raise ValueError(
                    f"client_config[{key!r}] reads the environment variable {name!r}, "
                    "which is not set on this worker."
                )
            out[key] = os.environ[name]
        else:
            out[key] = value
    return out


def _producer_settings(client_config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection settings (security, SASL, SSL...) of a reader's config a producer takes."""
    known = _producer_config()
    skip = {"client_id", *_WRITE_RESERVED}
    return {
        k: v
        for k, v in resolve_client_config(client_config).items()
        if k in known and k not in skip
    }


def _consumer_config() -> dict[str, Any]:
    from kafka import KafkaConsumer

    return KafkaConsumer.DEFAULT_CONFIG


def _producer_config() -> dict[str, Any]:
    from kafka import KafkaProducer

    return KafkaProducer.DEFAULT_CONFIG


_READ_RESERVED = {
    "bootstrap_servers": "pass bootstrap_servers as the first argument.",
    "group_id": "pass group_id as the group_id argument.",
    "enable_auto_commit": "offsets are committed from bundle finalization, never automatically.",
    "key_deserializer": "keys are emitted as bytes.",
    "value_deserializer": "values are emitted as bytes.",
}
_WRITE_RESERVED = {
    "bootstrap_servers": "pass bootstrap_servers as the first argument.",
    "acks": "pass acks as the acks argument.",
    "retries": "pass retries as the retries argument.",
    "max_request_size": "pass max_request_size as the max_request_size argument (records are "
    "sized against it before they are sent).",
    "key_serializer": "keys must already be bytes.",
    "value_serializer": "values must already be bytes.",
    "compression_type": "pass compression_type as the compression_type argument.",
}

COMPRESSION_TYPES = ("gzip", "snappy", "lz4", "zstd")
"""Record batch codecs; all four are read, and WriteToKafka writes any of them."""


def _check_codec(compression_type: str | None) -> None:
    if compression_type is None:
        return
    if compression_type not in COMPRESSION_TYPES:
        raise ValueError(
            f"compression_type={compression_type!r} is not valid; use None or one of "
            f"{', '.join(map(repr, COMPRESSION_TYPES))}."
        )
    from kafka import codec

    packages = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}
    if not getattr(codec, f"has_{compression_type}")():
        raise ValueError(
            f"compression_type={compression_type!r} needs the {packages[compression_type]!r} "
            "package, which is not installed."
        )


class _ReadConfig(NamedTuple):
    bootstrap_servers: list[str]
    topics: list[str]
    start: str | int
    group_id: str | None
    partitions: tuple[int, ...] | None
    max_records: int | None
    stop_after_idle_s: float | None
    idle_partition_s: float | None
    max_records_per_bundle: int
    max_bundle_s: float
    poll_timeout_ms: int
    client_config: dict[str, Any]
    dead_letter_topic: str | None = None
    dead_letter_max_bytes: int = DEFAULT_MAX_REQUEST_SIZE
    broker_timeout_s: float = 60.0
    warm_restart_frames: int = 0
    warm_restart_max_records: int = 100_000
    client: str = "kafka-python"


class _WriteConfig(NamedTuple):
    servers: list[str]
    topic: str
    acks: Any
    retries: int
    flush_timeout_s: float
    max_request_size: int
    oversize: Oversize
    client_config: dict[str, Any]
    compression_type: str | None = None
    dead_letter_topic: str | None = None
    format: str | None = None
    key: str | None = None
    client: str = "kafka-python"


def _positive(
    name: str, value: float | None, *, integer: bool = False, optional: bool = True
) -> None:
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        tail = " or None" if optional else ""
        raise ValueError(f"{name} must be {what}{tail}, got {value!r}.")
