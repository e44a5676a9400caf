"""Pipeline specs: Beam YAML with costream's transforms registered as providers.

A spec is ordinary Beam YAML (``pipeline: transforms: [{type, name?, input?, config}]``); the
costream types below are served by an inline Python provider, so a spec mixes them freely with
Beam's own YAML transforms (``Flatten``, ``Filter``, ...). Before anything is built, every
costream transform's ``config`` is checked against its constructor: unknown and missing keys are
errors that name the file, the transform and the key. A ``ContinualInference`` whose model
(its weights file's card) takes another feature size than the ``ExtractFeatures`` it reads
produces is an error naming both sizes.

``${NAME}`` and ``${NAME:-default}`` in string values are replaced from the environment (so
bootstrap addresses and secrets need not sit in the file). Expansion yields text; a costream
config key whose constructor parameter is typed ``int`` or ``float`` (and not ``str``) gets its
text converted, so ``max_payload_bytes: ${LIMIT:-1048576}`` arrives as an int, and
``batch_size: lots`` is an error naming the key.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PROVIDERS", "SpecError", "build_pipeline", "load_spec", "resolve_type"]

# type name -> "module:attribute"
PROVIDERS: dict[str, str] = {
    "ReadFromKafka": "costream.connectors.kafka_io:ReadFromKafka",
    "WriteToKafka": "costream.connectors.kafka_io:WriteToKafka",
    "WriteDeadLetters": "costream.connectors.kafka_io:WriteDeadLetters",
    "DecodeFrames": "costream.transforms.decode:DecodeFrames",
    "ExtractFeatures": "costream.transforms.backbones:ExtractFeatures",
    "ContinualInference": "costream.transforms.inference:ContinualInference",
}

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """A pipeline spec is malformed; the message names the file, transform and key."""


def resolve_type(name: str, providers: Mapping[str, str] = PROVIDERS) -> Callable[..., Any]:
    """Import the PTransform class behind a costream type name."""
    module, attr = providers[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise SpecError(
                    f"{where}: environment variable {name} is not set and has no default (write ${{{name}:-value}})."
                )
            return default

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, where) for k, v in value.items()}
    return value


def load_spec(
    path: str | Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Read, expand and validate a spec file.

    ``overrides`` / ``defaults`` map a costream type name to config values that replace / fill in
    the spec's (the CLI's ``--until-idle`` and runner-dependent settings).

    Raises:
        SpecError: unreadable YAML, no ``pipeline.transforms`` list, a transform without ``type``,
            a costream transform whose config has unknown or missing keys, or a model whose
            input size differs from what its ``ExtractFeatures`` produces.
    """
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("pipeline"), dict):
        raise SpecError(f"{path}: a spec needs a top-level 'pipeline:' mapping with 'transforms:'.")
    transforms = spec["pipeline"].get("transforms")
    if not isinstance(transforms, list) or not transforms:
        raise SpecError(f"{path}: 'pipeline.transforms' must be a non-empty list of transforms.")
    for i, t in enumerate(transforms):
        label = f"{path}: transform #{i + 1}"
        if not isinstance(t, dict) or "type" not in t:
            raise SpecError(f"{label} has no 'type:'.")
        label = f"{path}: transform {t.get('name', t['type'])!r} (type {t['type']})"
        t["config"] = _expand_env(t.get("config") or {}, label)
        if not isinstance(t["config"], dict):
            raise SpecError(f"{label}: 'config' must be a mapping of keys to values.")
        if t["type"] in PROVIDERS:
            for key, value in (defaults or {}).get(t["type"], {}).items():
                t["config"].setdefault(key, value)
            t["config"].update((overrides or {}).get(t["type"], {}))
            _check_config(resolve_type(t["type"]), t["config"], label)
            _convert_numbers(resolve_type(t["type"]), t["config"], label)
            if isinstance(t["config"].get("weights"), str):
                t["config"]["weights"] = _resolve_file(t["config"]["weights"], path)
    _check_feature_sizes(transforms, path)
    return spec


_REPO_ROOT = Path(__file__).resolve().parent.parent


def _resolve_file(value: str, spec_path: Path) -> str:
    """A relative file path as given (cwd), else beside the spec, else in the repository."""
    p = Path(value)
    if p.is_absolute() or p.exists() or value == "random":
        return value
    for base in (spec_path.parent, _REPO_ROOT):
        if (base / p).exists():
            return str(base / p)
    return value


def _check_config(cls: Callable[..., Any], config: dict[str, Any], label: str) -> None:
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL,)]
    for key in config:
        if key not in params:
            raise SpecError(
                f"{label}: unknown config key {key!r}; valid keys are {', '.join(valid)}."
            )
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind is not p.VAR_POSITIONAL and n not in config
    ]
    if missing:
        raise SpecError(f"{label}: missing required config key(s) {', '.join(missing)}.")


def _inputs(t: dict[str, Any]) -> list[str]:
    """The input references of a transform (``input:`` as a string, list or mapping)."""
    ref = t.get("input")
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, list):
        return [r for r in ref if isinstance(r, str)]
    if isinstance(ref, dict):
        return [r for r in ref.values() if isinstance(r, str)]
    return []


def _check_feature_sizes(transforms: list[dict[str, Any]], path: Path) -> None:
    """Refuse a ContinualInference whose model takes another feature size than its input gives.

    The model's size is ``feature_dim`` on its weights file's card; the input's is the
    ``feature_dim`` of the ``ExtractFeatures`` it reads (``ExtractFeatures.main``): the ResNet's
    width, the log-mel token size or the identity backbone's ``dim``. Otherwise every frame would
    be dead-lettered at stage inference while the job runs and exits 0. Skipped where a size is
    not known here: an identity backbone without ``dim``, weights that are not a file on this
    machine (a cluster path), an input that is not an ``ExtractFeatures``.
    """
    by_name = {t.get("name", t["type"]): t for t in transforms}
    for t in transforms:
        weights = t["config"].get("weights") if t["type"] == "ContinualInference" else None
        if not isinstance(weights, str) or not Path(weights).is_file():
            continue
        label = f"{path}: transform {t.get('name', t['type'])!r} (type {t['type']})"
        for ref in _inputs(t):
            source = by_name.get(ref) or by_name.get(ref.rpartition(".")[0])
            if source is None or source["type"] != "ExtractFeatures":
                continue
            source_name = source.get("name", source["type"])
            try:
                produced = resolve_type("ExtractFeatures")(**source["config"]).feature_dim
            except (TypeError, ValueError) as e:
                raise SpecError(
                    f"{path}: transform {source_name!r} (type ExtractFeatures): {e}"
                ) from e
            if produced is None:
                continue
            from costream.models.weights import WeightsError
            from costream.models.zoo import read_card

            try:
                card = read_card(weights)
            except WeightsError as e:
                raise SpecError(f"{label}: 'weights': {e}") from e
            expected = card.get("feature_dim")
            if isinstance(expected, int) and expected != produced:
                backbone = source["config"].get("backbone", "resnet18")
                raise SpecError(
                    f"{label}: the model {weights} takes features of size {expected}, but its "
                    f"input {source_name!r} (backbone {backbone!r}) produces features of size "
                    f"{produced}; use a model trained on {produced}-value features, or a backbone "
                    f"that produces {expected}."
                )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _convert_numbers(cls: Callable[..., Any], config: dict[str, Any], label: str) -> None:
    """Text values of int/float-typed constructor parameters (``${VAR}`` expansions) -> numbers."""
    params = inspect.signature(cls).parameters
    for key, value in config.items():
        if not isinstance(value, str) or key not in params:
            continue
        types = set(re.findall(r"[A-Za-z_]+", str(params[key].annotation)))
        if "str" in types or not types & {"int", "float"}:
            continue
        text = value.strip()
        if "None" in types and text.lower() in ("", "null", "none", "~"):
            config[key] = None
            continue
        if "int" in types and re.fullmatch(r"[-+]?[0-9]+", text):
            config[key] = int(text)
        elif "float" in types and _is_float(text):
            config[key] = float(text)
        else:
            kind = "a number" if "float" in types else "a whole number"
            raise SpecError(f"{label}: {key!r} must be {kind}, got {value!r}.")


def build_pipeline(
    pipeline: Any, spec: dict[str, Any], replace: Mapping[str, Callable[..., Any]] | None = None
) -> Any:
    """Expand a validated spec into ``pipeline`` with the costream providers registered.

    ``replace`` swaps the PTransform behind a type name (``costream score`` runs a spec with its
    Kafka reads and writes replaced by a file source and collectors).
    """
    from apache_beam.yaml import yaml_provider
    from apache_beam.yaml.yaml_transform import expand_pipeline

    spec = copy.deepcopy(spec)
    used = {t["type"] for t in spec["pipeline"]["transforms"]} & PROVIDERS.keys()
    factories = {name: (replace or {}).get(name) or resolve_type(name) for name in used}
    inline = yaml_provider.InlineProvider(factories)
    # Beam YAML tracks transforms by ids its own loader attaches, so hand it text, not a dict.
    text = yaml.safe_dump(spec, sort_keys=False)
    return expand_pipeline(
        pipeline, text, providers={name: [inline] for name in factories}, validate_schema=None
    )
