"""costream's Beam YAML types: one frozen dataclass per type holds its keys, types, defaults, docs.

Everything that knows a YAML type's configuration reads it from here:

* spec validation (:func:`costream.pipelines.spec.load_spec`, what ``costream run`` checks);
* the YAML-facing transforms that ``providers.yaml`` registers for ``apache_beam.yaml.main``
  (:mod:`costream.pipelines.yaml_transforms`): their constructor signatures, and so Beam's
  ``config_schema`` for the provider, are made from these fields;
* the reference ``docs/yaml.md`` and ``costream transforms`` (:mod:`costream.pipelines.yaml_reference`).

The YAML types configure costream's Python PTransforms (``target``), whose classes and keyword
arguments stay as they are. Where costream and Beam's own YAML transforms mean the same thing the
YAML key is Beam's name and maps to the Python keyword in ``metadata["python"]``: ``topic`` ->
``topics``, ``consumer_config`` / ``producer_config_updates`` -> ``client_config``. The Kafka types
are named so that they do not shadow Beam's ``ReadFromKafka`` / ``WriteToKafka``.

Values are checked against the field types. Text where the type takes no text (what a
``${NAME:-default}`` expansion yields) is converted: ``"16"`` to 16 for an ``int``, ``"2.5"`` for
a ``float``, ``"true"`` for a ``bool``, ``"null"`` (or ``""``) where ``None`` is allowed.

Example:
    >>> cfg = parse_config("ContinualInference", {"weights": "/m.safetensors",
    ...                    "max_fill": "4", "error_handling": {"output": "dead_letter"}})
    >>> cfg.max_fill, python_kwargs(cfg)["gap_policy"]
    (4, 'fill')
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

__all__ = [
    "PACKAGE_ROOT",
    "TYPES",
    "ConfigError",
    "YamlType",
    "describe_type",
    "expand_env",
    "parse_config",
    "python_kwargs",
    "resolve_path",
    "type_of",
]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""The folder above ``pipelines/``: the repository, or ``site-packages/costream`` once installed
(where ``pipelines/assets`` is package data); relative weights paths are also looked up here."""

_MIB = 1 << 20


class ConfigError(ValueError):
    """A YAML transform's config is wrong; the message names the key and what would be right."""


# -- the types ---------------------------------------------------------------------------------


def _key(
    doc: str,
    default: Any = MISSING,
    *,
    python: str | None = None,
    convert: Callable[[Any], Any] | None = None,
    path: bool = False,
) -> Any:
    """A config field.

    ``doc`` is its text in the reference, ``python`` the target's keyword where it differs,
    ``convert`` applies to the value on its way to the target, ``path`` marks a file path.
    """
    metadata = {"doc": doc, "python": python, "convert": convert, "path": path}
    return field(default=default, metadata=metadata)


def _kafka_names(settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Kafka client settings with Java's dotted names as kafka-python's (``security.protocol``)."""
    if settings is None:
        return None
    return {k.replace(".", "_"): v for k, v in settings.items()}


_ERROR_HANDLING_DOC = (
    "Beam's dead-letter convention: `{output: NAME}` names the output that carries the records "
    "this transform cannot take (costream dead letters: the original record, the reason and the "
    "stage). Required, and the output must be consumed (by `WriteDeadLettersToKafka`), so no "
    "dead letter is ever dropped unseen."
)
_KAFKA_SETTINGS_DOC = (
    "kafka-python {client} settings, merged last (SASL, SSL, fetch sizes...). Java's dotted "
    "names are accepted (`security.protocol` is `security_protocol`). A value "
    "`{{from_env: NAME}}` is read from the environment on the worker."
)


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
    max_records_per_bundle: int = _key("Records per partition per bundle.", 500)
    max_bundle_s: float = _key("Wall-clock seconds a bundle may spend on one partition.", 1.0)
    poll_timeout_ms: int = _key("How long one poll waits on a quiet partition.", 100)
    dead_letter_topic: str | None = _key(
        "Where records that cannot be read at all go (stage `read`: a header name that is not "
        "UTF-8, a timestamp out of range), acknowledged before the offset moves on. Without it "
        "such records are skipped, logged and counted (`records_skipped`).",
        None,
    )
    dead_letter_max_bytes: int = _key("Largest dead letter the reader writes.", _MIB)
    broker_timeout_s: float = _key(
        "A partition that reaches no broker for this long fails the read; shorter outages are "
        "waited out.",
        60.0,
    )
    consumer_config: dict[str, Any] | None = _key(
        _KAFKA_SETTINGS_DOC.format(client="KafkaConsumer"),
        None,
        python="client_config",
        convert=_kafka_names,
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
        _MIB,
    )
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = _key(
        "Codec of the record batches written; null: none.", None
    )
    producer_config_updates: dict[str, Any] | None = _key(
        _KAFKA_SETTINGS_DOC.format(client="KafkaProducer"),
        None,
        python="client_config",
        convert=_kafka_names,
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


@dataclass(frozen=True, kw_only=True)
class DecodeFramesConfig:
    """Decode records of the stream contract into frames (images, audio chunks, features)."""

    image_size: int | list[int] | None = _key(
        "Resize images to this size: one int or [height, width]; null: as they are.", None
    )
    max_payload_bytes: int = _key(
        "A larger record value is a dead letter (stage `decode`).", 16 * _MIB
    )
    max_pixels: int = _key(
        "An image with more pixels (read from its header) is a dead letter.", 8192 * 8192
    )
    error_handling: dict[str, str] = _key(_ERROR_HANDLING_DOC)


@dataclass(frozen=True, kw_only=True)
class ExtractFeaturesConfig:
    """Decode records and turn each frame into backbone features, batched across streams."""

    backbone: str = _key(
        "`resnet18`, `resnet18_small`, `logmel` (audio), `vggish` (audio: 0.25 s chunks, each "
        "stream's last 1 s embedded; docs/audio-setting.md) or `identity` (features).",
        "resnet18",
    )
    weights: str | None = _key(
        "ResNets and `vggish`: a safetensors file (a relative path is looked up in the working "
        "directory, then in costream's package) or `random` (seeded, demos and tests); others: "
        "null.",
        None,
        path=True,
    )
    batch_size: int = _key("The largest batch.", 16)
    min_batch_size: int = _key("The smallest batch Beam aims for.", 1)
    max_batch_duration_secs: float | None = _key(
        "Longest wait for a batch to fill, across bundles; null: batch within a bundle. On a "
        "distributed runner (Flink) batches stay within a bundle, which keeps each stream's "
        "order across restores.",
        0.05,
    )
    num_threads: int = _key("torch intra-op threads per worker process.", 1)
    share_across_processes: bool = _key("One model per machine instead of per process.", False)
    seed: int = _key("Seed of `weights: random`.", 0)
    width: float | None = _key("ResNet width multiplier; null: by name (1.0, small: 0.25).", None)
    input_size: int | list[int] | None = _key(
        "ResNet input size, one int or [height, width]; null: by name (224, small: 112).", None
    )
    rate: int = _key("`logmel`: sample rate in Hz; `vggish`: 16000 only.", 16000)
    n_mels: int = _key("`logmel`: mel bins.", 64)
    patch: int = _key("`logmel`: spectrogram frames per token (one chunk).", 8)
    hop_length: int = _key("`logmel`: samples between spectrogram frames.", 160)
    win_length: int = _key("`logmel`: window length in samples.", 400)
    n_fft: int = _key("`logmel`: FFT size.", 512)
    dim: int | None = _key("`identity`: the feature size records must have; null: any.", None)
    max_payload_bytes: int = _key(
        "A larger record value is a dead letter (stage `decode`).", 16 * _MIB
    )
    error_handling: dict[str, str] = _key(_ERROR_HANDLING_DOC)


@dataclass(frozen=True, kw_only=True)
class ContinualInferenceConfig:
    """Run a continual model over each stream's features, one step per frame, state in Beam."""

    weights: str = _key(
        "The model's safetensors file (its card names the model); a relative path is looked up "
        "in the working directory, then in costream's package.",
        path=True,
    )
    gap_policy: Literal["reset", "fill"] = _key(
        "A missing frame is held from the previous one (`fill`, up to `max_fill`) or resets the "
        "stream (`reset`).",
        "fill",
    )
    max_fill: int | None = _key(
        "Largest gap `fill` bridges, in frames; null: the default (8).", None
    )
    idle_timeout_s: float | None = _key(
        "Clear a stream's state after this many seconds without a frame; null: keep it.", 600.0
    )
    idle_timer: bool | None = _key(
        "Enforce `idle_timeout_s` with a processing-time timer (true) or as a TTL checked on "
        "the next frame plus a sweep (false). null: the timer on distributed runners (Flink), "
        "the TTL on the in-process runner, whose timers fire right after their bundle.",
        None,
    )
    max_jump: int = _key("A forward jump of more frames starts a new stream epoch.", 2**32)
    error_handling: dict[str, str] = _key(_ERROR_HANDLING_DOC)


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
            "costream.transforms.backbones:ExtractFeatures",
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


# -- values ------------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NULL_TEXT = ("", "null", "none", "~")


def expand_env(value: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in the strings of ``value`` (nested) from ``environ``.

    Raises:
        ConfigError: a variable that is not set and has no default.
    """
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is None:
                raise ConfigError(
                    f"environment variable {name} is not set and has no default (write ${{{name}:-value}})."
                )
            return default

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, environ) for k, v in value.items()}
    return value


def resolve_path(value: str, *bases: Path) -> str:
    """A relative file path made absolute where it exists.

    Looked up in the working directory, then under each of ``bases``; ``random`` and paths
    found nowhere (a path on a cluster's workers) stay as they are.
    """
    p = Path(value)
    if value == "random" or p.is_absolute():
        return value
    for base in (Path.cwd(), *bases):
        if (base / p).exists():
            return str((base / p).resolve())
    return value


def type_of(config: type, key: str) -> Any:
    """The annotation of ``key`` in ``config`` (evaluated)."""
    return _hints(config)[key]


@functools.cache
def _hints(config: type) -> dict[str, Any]:
    return typing.get_type_hints(config)


def _members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


def describe_type(tp: Any, *, plural: bool = False) -> str:
    """``tp`` in words for error messages: ``a whole number``, ``text or a list of text``."""
    parts = []
    for m in _members(tp):
        origin = typing.get_origin(m)
        if m is type(None):
            continue
        if origin is Literal:
            parts.append("one of " + ", ".join(repr(a) for a in typing.get_args(m)))
        elif origin is list:
            parts.append("a list of " + describe_type(typing.get_args(m)[0], plural=True))
        elif origin is dict or m is dict:
            parts.append("a mapping")
        elif m is bool:
            parts.append("true or false")
        elif m is int:
            parts.append("whole numbers" if plural else "a whole number")
        elif m is float:
            parts.append("numbers" if plural else "a number")
        elif m is str:
            parts.append("text")
        else:
            parts.append(str(m))
    return " or ".join(parts)


_NO = object()


def _exact(value: Any, m: Any) -> Any:
    """``value`` as type ``m`` without reading text, else ``_NO``."""
    origin = typing.get_origin(m)
    if m is Any:
        return value
    if m is type(None):
        return None if value is None else _NO
    if origin is Literal:
        return (
            value if any(value == a and type(value) is type(a) for a in typing.get_args(m)) else _NO
        )
    if origin is list:
        if not isinstance(value, list):
            return _NO
        items = [_coerce(v, typing.get_args(m)[0]) for v in value]
        return _NO if any(v is _NO for v in items) else items
    if origin is dict or m is dict:
        return dict(value) if isinstance(value, dict) else _NO
    if m is bool:
        return value if isinstance(value, bool) else _NO
    if m is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if m is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _NO
    if m is str:
        return value if isinstance(value, str) else _NO
    raise TypeError(f"config fields cannot be typed {m!r}")


def _from_text(text: str, m: Any) -> Any:
    """Text (an environment expansion) read as type ``m``, else ``_NO``."""
    t = text.strip()
    origin = typing.get_origin(m)
    if m is type(None):
        return None if t.lower() in _NULL_TEXT else _NO
    if m is bool:
        return {"true": True, "false": False}.get(t.lower(), _NO)
    if m is int or (origin is Literal and any(type(a) is int for a in typing.get_args(m))):
        if not re.fullmatch(r"[-+]?[0-9]+", t):
            return _NO
        return int(t) if m is int else _exact(int(t), m)
    if m is float:
        try:
            return float(t)
        except ValueError:
            return _NO
    return _NO


def _coerce(value: Any, tp: Any) -> Any:
    members = _members(tp)
    for m in members:
        got = _exact(value, m)
        if got is not _NO:
            return got
    # text where no text is taken: a ${...} expansion, read as the type it stands for
    if isinstance(value, str) and str not in members:
        for m in members:
            got = _from_text(value, m)
            if got is not _NO:
                return got
    return _NO


def parse_config(type_name: str, config: Mapping[str, Any]) -> Any:
    """Check ``config`` (a YAML ``config:`` mapping) for ``type_name``; returns its frozen dataclass.

    Raises:
        ConfigError: an unknown key (the near one suggested, every valid key listed), a key
            taken from elsewhere (with what to write instead), a missing required key, a value
            of the wrong type, or an ``error_handling`` that is not ``{output: NAME}``.
    """
    yt = TYPES[type_name]
    fields = {f.name: f for f in dataclasses.fields(yt.config)}
    for key in config:
        if key in fields:
            continue
        if key in yt.refused:
            raise ConfigError(f"{key!r} is not a key of {type_name}: {yt.refused[key]}")
        near = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown config key {key!r}{hint}; valid keys are {', '.join(fields)}.")
    missing = [
        n for n, f in fields.items()
        if f.default is MISSING and f.default_factory is MISSING and n not in config  # type: ignore[misc]
    ]  # fmt: skip
    if missing == ["error_handling"]:
        raise ConfigError(
            f"{type_name} needs error_handling: {{output: NAME}}: it sends the records it cannot "
            "take to that output, which must be consumed (by WriteDeadLettersToKafka, e.g. "
            "through a Flatten), so that no dead letter is lost unseen."
        )
    if missing:
        raise ConfigError(f"missing required config key(s) {', '.join(missing)}.")
    values = {}
    for key, value in config.items():
        tp = type_of(yt.config, key)
        got = _coerce(value, tp)
        if got is _NO:
            raise ConfigError(f"{key!r} must be {describe_type(tp)}, got {value!r}.")
        values[key] = got
    handling = values.get("error_handling")
    if handling is not None and (
        set(handling) != {"output"}
        or not isinstance(handling["output"], str)
        or not handling["output"]
    ):
        raise ConfigError(
            f"error_handling must be {{output: NAME}} (the name of the dead-letter output), got {handling!r}."
        )
    return yt.config(**values)


def python_kwargs(cfg: Any) -> dict[str, Any]:
    """The target PTransform's keyword arguments for a parsed config.

    YAML keys become the Python keywords (``topic`` -> ``topics``...), ``error_handling`` (YAML
    only) is left out, and so is a null whose YAML default is null (the Python default is null
    too, and a keyword the target does not take yet, such as ``format``, is then never passed).
    """
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "error_handling" or (value is None and f.default is None):
            continue
        convert = f.metadata.get("convert")
        out[f.metadata.get("python") or f.name] = convert(value) if convert else value
    return out


def python_key(type_name: str, key: str) -> str:
    """The target's keyword for the YAML ``key`` of ``type_name``."""
    f = {f.name: f for f in dataclasses.fields(TYPES[type_name].config)}.get(key)
    return (f.metadata.get("python") if f else None) or key


def path_keys(type_name: str) -> list[str]:
    """The keys of ``type_name`` that hold file paths (resolved before the target sees them)."""
    return [f.name for f in dataclasses.fields(TYPES[type_name].config) if f.metadata.get("path")]


def yaml_message(type_name: str, message: str) -> str:
    """A target's error message with its Python keywords replaced by the YAML keys."""
    for f in dataclasses.fields(TYPES[type_name].config):
        python = f.metadata.get("python")
        if python:
            message = re.sub(rf"\b{python}\b", f.name, message)
    return message
