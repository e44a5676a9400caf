"""costream's PTransforms as Beam YAML types: the classes ``providers.yaml`` registers.

Each class is one type of :data:`costream.pipelines.configs.TYPES`. Its constructor takes
that type's ``config:`` keys (its signature and docstring are made from the type's config
dataclass, so Beam YAML's ``config_schema`` and description for the provider are too), and its
``expand`` hands the Python keywords to the costream PTransform behind it. For a spec run by
Beam's own entry point (``python -m apache_beam.yaml.main``) the layer also does what
``costream run``'s spec loading does:

* ``${NAME}`` / ``${NAME:-default}`` in values are expanded from the environment, and text is
  converted to the numbers the fields take;
* a relative weights path is looked up in the working directory, then in costream's package
  (where the demo models are package data);
* settings that depend on the runner come from :mod:`costream.transforms.beam_fixes`
  (:func:`~costream.transforms.beam_fixes.transform_kwargs`): ``ContinualInference`` with
  ``idle_timer: null`` (the default) takes the TTL check on the in-process runner (FnApiRunner,
  ``--job_endpoint=embed``), whose processing-time timers fire right after their bundle, and the
  idle timer elsewhere; ``ExtractFeatures`` batches within a bundle on a distributed runner
  (Flink), which keeps each stream's order across restores.

Outputs: ``output`` and, where the type has dead letters, the output its ``error_handling``
names (required, see :func:`costream.pipelines.configs.parse_config`). With
``error_handling`` Beam YAML resolves the bare transform name to ``output``. The writers have no
outputs.

Example (Python; in YAML the same keys go under ``config:``)::

    features = records | ExtractFeatures(backbone="identity", dim=64,
                                         error_handling={"output": "dead_letter"})
    good, dead = features["output"], features["dead_letter"]
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Union

import apache_beam as beam

from costream.transforms import beam_fixes
from costream.transforms.beam_fixes import in_process

from . import configs
from .configs import PACKAGE_ROOT, TYPES, ConfigError, YamlType

__all__ = [
    "CLASSES",
    "ContinualInference",
    "DecodeFrames",
    "ExtractFeatures",
    "ReadFramesFromKafka",
    "WriteDeadLettersToKafka",
    "WriteDetectionsToKafka",
    "for_spec",
    "in_process",
]


class _YamlTransform(beam.PTransform):
    """A costream YAML type: its config parsed at construction, its target built at expansion."""

    yaml_type: ClassVar[YamlType]
    target: ClassVar[Callable[..., beam.PTransform] | None] = None
    """Replaces the type's Python PTransform (``costream score`` swaps the Kafka ends)."""
    expand_env: ClassVar[bool] = True
    """False where the config was expanded already (``costream run`` loads specs itself)."""
    run_ends: ClassVar[bool] = False
    """True where the run is meant to end by itself (``costream run --until-idle``)."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        name = self.yaml_type.name
        try:
            if self.expand_env:
                config = configs.expand_env(config)
            self.config = configs.parse_config(name, config)
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None

    def default_label(self) -> str:
        return self.yaml_type.name

    def python_kwargs(self, pipeline: beam.Pipeline | None) -> dict[str, Any]:
        """The target's keywords, file paths resolved.

        Choices that depend on the runner are made for ``pipeline`` by
        :func:`costream.transforms.beam_fixes.transform_kwargs`; without one (validation) they
        stay at the target's defaults.
        """
        kwargs = configs.python_kwargs(self.config)
        for key in configs.path_keys(self.yaml_type.name):
            value = getattr(self.config, key)
            if isinstance(value, str):
                kwargs[configs.python_key(self.yaml_type.name, key)] = configs.resolve_path(
                    value, PACKAGE_ROOT
                )
        return beam_fixes.transform_kwargs(
            self.yaml_type.name, kwargs, pipeline, run_ends=self.run_ends
        )

    def build(self, pipeline: beam.Pipeline | None = None) -> beam.PTransform:
        """The costream PTransform behind this type, configured (errors in the YAML keys)."""
        target = self.target or _load(self.yaml_type.target)
        try:
            return target(**self.python_kwargs(pipeline))
        except (TypeError, ValueError) as e:
            message = configs.yaml_message(self.yaml_type.name, str(e))
            raise ConfigError(f"{self.yaml_type.name}: {message}") from e

    def expand(self, pvalue: Any) -> dict[str, beam.PCollection]:
        # Expanded in place rather than applied: the target's steps keep the names they had
        # without this layer (Flink derives operator ids, and so savepoint state, from them).
        result = self.build(pvalue.pipeline).expand(pvalue)
        if not self.yaml_type.outputs:
            return {}
        if not isinstance(result, Mapping):
            return {"output": result}
        from costream.transforms.records import DEAD_LETTER

        (main,) = (pcoll for tag, pcoll in result.items() if tag != DEAD_LETTER)
        return {"output": main, self.config.error_handling["output"]: result[DEAD_LETTER]}


def _load(target: str) -> Callable[..., beam.PTransform]:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _for_beam(tp: Any) -> Any:
    """A field type as Beam's schema inference takes it (``typing`` forms, no ``Literal``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or isinstance(tp, type(int | None)):
        members = [a for a in args if a is not type(None)]
        if len(members) > 1:  # Beam schemas have no unions: any value (checked by the config)
            return Any
        return typing.Optional[_for_beam(members[0])]  # noqa: UP045 (Beam reads typing forms)
    if origin is Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else Any
    if origin is list:
        # built from a runtime value (mypy reads List[...] as a static type application)
        list_form: Any = typing.List  # noqa: UP006 (Beam reads typing forms)
        return list_form[_for_beam(args[0])]
    if origin is dict:
        return typing.Dict[str, Any]  # noqa: UP006
    return tp


def _signature(yt: YamlType) -> inspect.Signature:
    from apache_beam.yaml.yaml_errors import ErrorHandlingConfig

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in dataclasses.fields(yt.config):
        tp = configs.type_of(yt.config, f.name)
        required = f.default is dataclasses.MISSING
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if required else f.default,
                annotation=ErrorHandlingConfig if f.name == "error_handling" else _for_beam(tp),
            )
        )
    return inspect.Signature(params)


def _docstring(yt: YamlType) -> str:
    """Google style, as Beam YAML parses a provider's docs: summary, then each key under Args."""
    lines = [(yt.config.__doc__ or yt.name).strip(), "", f"Configures {yt.target}.", "", "Args:"]
    for f in dataclasses.fields(yt.config):
        lines.append(f"    {f.name}: {f.metadata['doc']}")
    return "\n".join(lines) + "\n"


def _yaml_type(name: str) -> Callable[[type[_YamlTransform]], type[_YamlTransform]]:
    def make(cls: type[_YamlTransform]) -> type[_YamlTransform]:
        yt = TYPES[name]
        cls.yaml_type = yt
        cls.__doc__ = _docstring(yt)

        def __init__(self: _YamlTransform, **config: Any) -> None:
            _YamlTransform.__init__(self, **config)

        __init__.__signature__ = _signature(yt)  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[method-assign]
        return cls

    return make


@_yaml_type("ReadFramesFromKafka")
class ReadFramesFromKafka(_YamlTransform):
    """The ``ReadFramesFromKafka`` type (docs from its config dataclass)."""

    _yaml_requires_inputs = False  # a source (Beam YAML otherwise wants inputs but for Read*)


@_yaml_type("DecodeFrames")
class DecodeFrames(_YamlTransform):
    """The ``DecodeFrames`` type (docs from its config dataclass)."""


@_yaml_type("ExtractFeatures")
class ExtractFeatures(_YamlTransform):
    """The ``ExtractFeatures`` type (docs from its config dataclass)."""


@_yaml_type("ContinualInference")
class ContinualInference(_YamlTransform):
    """The ``ContinualInference`` type (docs from its config dataclass)."""


@_yaml_type("WriteDetectionsToKafka")
class WriteDetectionsToKafka(_YamlTransform):
    """The ``WriteDetectionsToKafka`` type (docs from its config dataclass)."""


@_yaml_type("WriteDeadLettersToKafka")
class WriteDeadLettersToKafka(_YamlTransform):
    """The ``WriteDeadLettersToKafka`` type (docs from its config dataclass)."""


CLASSES: dict[str, type[_YamlTransform]] = {
    cls.yaml_type.name: cls
    for cls in (
        ReadFramesFromKafka,
        DecodeFrames,
        ExtractFeatures,
        ContinualInference,
        WriteDetectionsToKafka,
        WriteDeadLettersToKafka,
    )
}
"""The YAML-facing class of each type in :data:`~costream.pipelines.configs.TYPES`."""


def for_spec(
    name: str, target: Callable[..., beam.PTransform] | None = None, *, run_ends: bool = False
) -> type[_YamlTransform]:
    """The class of type ``name`` for a spec that ``load_spec`` expanded already.

    ``target`` replaces its Python PTransform when given (``costream score``); ``run_ends``
    marks a run meant to end by itself (:func:`costream.transforms.beam_fixes.ttl_instead_of_timer`).
    """
    base = CLASSES[name]
    attrs = {
        "expand_env": False,
        "run_ends": run_ends,
        "target": None if target is None else staticmethod(target),
    }
    return type(base.__name__, (base,), {**attrs, "__module__": __name__})
