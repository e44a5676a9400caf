"""The pieces every config dataclass is made of: a documented field, the error, shared texts.

A config field is a dataclass field whose ``metadata`` carries its reference text (``doc``), the
target PTransform's keyword where it differs from the YAML key (``python``), a conversion on the
way to the target (``convert``) and whether it holds a file path (``path``). Everything that
reads a config (validation, Beam's ``config_schema``, ``docs/yaml.md``) reads these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any

__all__ = [
    "ERROR_HANDLING_DOC",
    "KAFKA_SETTINGS_DOC",
    "MIB",
    "PACKAGE_ROOT",
    "ConfigError",
    "kafka_names",
    "key",
]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
"""The folder above ``pipelines/``: the repository, or ``site-packages/costream`` once installed
(where ``pipelines/assets`` is package data); relative weights paths are also looked up here."""

MIB = 1 << 20


class ConfigError(ValueError):
    """A YAML transform's config is wrong; the message names the key and what would be right."""


def key(
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


def kafka_names(settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Kafka client settings with Java's dotted names as kafka-python's (``security.protocol``)."""
    if settings is None:
        return None
    return {k.replace(".", "_"): v for k, v in settings.items()}


ERROR_HANDLING_DOC = (
    "Beam's dead-letter convention: `{output: NAME}` names the output that carries the records "
    "this transform cannot take (costream dead letters: the original record, the reason and the "
    "stage). Required, and the output must be consumed (by `WriteDeadLettersToKafka`), so no "
    "dead letter is ever dropped unseen."
)
KAFKA_SETTINGS_DOC = (
    "kafka-python {client} settings, merged last (SASL, SSL, fetch sizes...). Java's dotted "
    "names are accepted (`security.protocol` is `security_protocol`). A value "
    "`{{from_env: NAME}}` is read from the environment on the worker."
)
