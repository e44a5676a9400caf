"""costream's Beam YAML types: one frozen dataclass per type holds its keys, types, defaults, docs.

Everything that knows a YAML type's configuration reads it from here:

* spec validation (:func:`costream.pipelines.spec.load_spec`, what ``costream run`` checks):
  a spec's ``config:`` is checked against the type's dataclass (:func:`parse_config`);
* the YAML-facing transforms that ``providers.yaml`` registers for ``apache_beam.yaml.main``
  (:mod:`costream.pipelines.yaml_transforms`): they build costream's PTransform from the parsed
  config object, and their constructor signatures, and so Beam's ``config_schema`` for the
  provider, are made from these fields;
* the reference ``docs/yaml.md`` and ``costream transforms`` (:mod:`costream.pipelines.yaml_reference`).

The YAML types configure costream's Python PTransforms (``target``), whose classes and keyword
arguments stay as they are. Where costream and Beam's own YAML transforms mean the same thing the
YAML key is Beam's name and maps to the Python keyword in ``metadata["python"]``: ``topic`` ->
``topics``, ``consumer_config`` / ``producer_config_updates`` -> ``client_config``. The Kafka types
are named so that they do not shadow Beam's ``ReadFromKafka`` / ``WriteToKafka``.

Files, in the order a reader needs them:

* :mod:`.fields`: a documented config field (:func:`~.fields.key`), :class:`ConfigError`;
* :mod:`.kafka`: the Kafka reader's and writers' configs;
* :mod:`.stages`: the decode, features and continual inference configs;
* :mod:`.registry`: :data:`TYPES` (name, target, config, outputs, example, refused keys);
* :mod:`.validate`: :func:`parse_config`, :func:`python_kwargs` and the value conversions.

Example:
    >>> cfg = parse_config("ContinualInference", {"weights": "/m.safetensors",
    ...                    "max_fill": "4", "error_handling": {"output": "dead_letter"}})
    >>> cfg.max_fill, python_kwargs(cfg)["gap_policy"]
    (4, 'fill')
"""

from __future__ import annotations

from .fields import PACKAGE_ROOT, ConfigError
from .kafka import (
    ReadFramesFromKafkaConfig,
    WriteDeadLettersToKafkaConfig,
    WriteDetectionsToKafkaConfig,
)
from .registry import RENAMED, TYPES, YamlType
from .stages import ContinualInferenceConfig, DecodeFramesConfig, ExtractFeaturesConfig
from .validate import (
    describe_type,
    expand_env,
    parse_config,
    path_keys,
    python_key,
    python_kwargs,
    resolve_path,
    type_of,
    yaml_message,
)

__all__ = [
    "PACKAGE_ROOT",
    "RENAMED",
    "TYPES",
    "ConfigError",
    "ContinualInferenceConfig",
    "DecodeFramesConfig",
    "ExtractFeaturesConfig",
    "ReadFramesFromKafkaConfig",
    "WriteDeadLettersToKafkaConfig",
    "WriteDetectionsToKafkaConfig",
    "YamlType",
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
