"""Checking a YAML ``config:`` mapping against its type's config dataclass, and handing it on.

:func:`parse_config` turns a mapping into the type's frozen dataclass (or a
:class:`~costream.pipelines.configs.fields.ConfigError` naming the key); :func:`python_kwargs`
turns that into the keyword arguments of the Python PTransform behind the type.

Values are checked against the field types. Text where the type takes no text (what a
``${NAME:-default}`` expansion yields) is converted: ``"16"`` to 16 for an ``int``, ``"2.5"`` for
a ``float``, ``"true"`` for a ``bool``, ``"null"`` (or ``""``) where ``None`` is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Literal, Union

from .fields import ConfigError
from .registry import TYPES

__all__ = [
    "describe_type",
    "expand_env",
    "parse_config",
    "path_keys",
    "python_key",
    "python_kwargs",
    "resolve_path",
    "type_of",
    "yaml_message",
]

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
