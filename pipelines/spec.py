"""Pipeline specs: Beam YAML with costream's transforms registered as providers.

A spec is ordinary Beam YAML (``pipeline: transforms: [{type, name?, input?, config}]``); the
costream types of :data:`costream.pipelines.configs.TYPES` (``ReadFramesFromKafka``,
``DecodeFrames``, ``ExtractFeatures``, ``ContinualInference``, ``WriteDetectionsToKafka``,
``WriteDeadLettersToKafka``) are served by an inline Python provider, so a spec mixes them freely
with Beam's own YAML transforms (``Flatten``, ``Filter``, Beam's Java ``ReadFromKafka``...).
The same spec runs under Beam's entry point, ``python -m apache_beam.yaml.main``, through the
``providers.yaml`` it includes (:data:`PROVIDERS_FILE`)::

    providers:
      - include: "{{ costream_providers | default('pipelines/providers.yaml') }}"

The spec text is rendered as a Jinja template first, as ``yaml.main`` does, with
``costream_providers`` set to the installed file; that include is then dropped here, since
:func:`build_pipeline` registers the same types itself.

Before anything is built, every costream transform's ``config`` is checked against its type's
config dataclass (:func:`costream.pipelines.configs.parse_config`) and its Python PTransform
is constructed: unknown keys (with the near one suggested), missing keys, values of the wrong
type and refused values are errors that name the file and the transform's line, the transform
and the key. A transform with dead letters needs ``error_handling: {output: NAME}`` and that
output consumed. A
``ContinualInference`` whose model (its weights file's card) takes another feature size than the
``ExtractFeatures`` it reads produces is an error naming both sizes.

``${NAME}`` and ``${NAME:-default}`` in string values are replaced from the environment (so
bootstrap addresses and secrets need not sit in the file). Expansion yields text; a key whose
type takes no text gets its text converted, so ``max_payload_bytes: ${LIMIT:-1048576}`` arrives
as an int, and ``batch_size: lots`` is an error naming the key.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from . import configs
from .configs import RENAMED, TYPES, ConfigError

__all__ = [
    "PROVIDERS",
    "PROVIDERS_FILE",
    "SpecError",
    "build_pipeline",
    "load_spec",
    "resolve_type",
]

PROVIDERS: dict[str, str] = {name: t.target for name, t in TYPES.items()}
"""costream YAML type name -> ``module:Class`` of the Python PTransform it configures."""

PROVIDERS_FILE = Path(__file__).resolve().parent / "providers.yaml"
"""costream's Beam YAML providers, installed with the package (``costream providers``)."""

JINJA_VARIABLE = "costream_providers"
"""The Jinja variable a spec's ``include:`` names :data:`PROVIDERS_FILE` by."""


class SpecError(ValueError):
    """A pipeline spec is malformed; the message names the file, transform and key."""


def resolve_type(name: str, providers: Mapping[str, str] = PROVIDERS) -> Callable[..., Any]:
    """Import the Python PTransform class behind a costream type name."""
    module, attr = providers[name].split(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


def _for_type(values: Mapping[str, Mapping[str, Any]] | None, name: str) -> Mapping[str, Any]:
    """The entry of ``values`` for YAML type ``name``, keyed by it or its Python class's name."""
    values = values or {}
    return values.get(name) or values.get(TYPES[name].python_name) or {}


def _render(text: str, path: Path) -> str:
    """The spec text rendered as Beam's ``yaml.main`` renders it (Jinja, strict undefined)."""
    if "{{" not in text and "{%" not in text and "{#" not in text:
        return text
    import jinja2
    from apache_beam.yaml.yaml_transform import expand_jinja

    try:
        return expand_jinja(text, {JINJA_VARIABLE: str(PROVIDERS_FILE)})
    except jinja2.TemplateError as e:
        raise SpecError(
            f"{path}: the spec is a Jinja template that does not render: {e}. costream sets "
            f"only {{{{ {JINJA_VARIABLE} }}}}."
        ) from e


def _is_costream_providers(include: Any) -> bool:
    if not isinstance(include, str):
        return False
    p = Path(include)
    try:
        return p.resolve() == PROVIDERS_FILE or p.read_bytes() == PROVIDERS_FILE.read_bytes()
    except OSError:
        return False


@functools.cache
def _beam_keys(beam_type: str) -> frozenset[str]:
    """The config keys of one of Beam's own YAML Kafka transforms (its standard_io.yaml)."""
    import apache_beam.yaml

    standard = Path(apache_beam.yaml.__file__).parent / "standard_io.yaml"
    for provider in yaml.safe_load(standard.read_text()):
        mappings = (provider.get("config") or {}).get("mappings") or {}
        if beam_type in mappings:
            return frozenset(mappings[beam_type])
    return frozenset()


def _renamed(t: dict[str, Any], label: str) -> None:
    """Refuse costream's earlier type names; Beam's Kafka types keep Beam's keys."""
    old, config = t["type"], t["config"]
    if old not in RENAMED:
        return
    new = RENAMED[old]
    beam_keys = _beam_keys(old)
    if beam_keys and set(config) <= beam_keys:
        return  # Beam's own ReadFromKafka / WriteToKafka (Java): Beam checks it
    if beam_keys:
        others = ", ".join(sorted(set(config) - beam_keys))
        raise SpecError(
            f"{label}: {old} is Beam's Java Kafka transform, which has no key(s) {others}; "
            f"costream's is {new} (docs/yaml.md)."
        )
    raise SpecError(f"{label}: costream's {old} is now {new} (docs/yaml.md).")


def load_spec(
    path: str | Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Read, expand and validate a spec file.

    ``overrides`` / ``defaults`` map a costream type name (or its Python class's name:
    ``ReadFromKafka`` for ``ReadFramesFromKafka``) to config values that replace / fill in the
    spec's (the CLI's ``--until-idle`` and runner-dependent settings).

    Raises:
        SpecError: unreadable YAML, no ``pipeline.transforms`` list, a transform without ``type``,
            a costream transform whose config is wrong (see the module docstring), dead letters
            that go nowhere, or a model whose input size differs from what its
            ``ExtractFeatures`` produces.
    """
    path = Path(path)
    try:
        text = _render(path.read_text(), path)
        spec = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("pipeline"), dict):
        raise SpecError(f"{path}: a spec needs a top-level 'pipeline:' mapping with 'transforms:'.")
    if isinstance(spec.get("providers"), list):
        kept = [
            p for p in spec["providers"]
            if not (isinstance(p, dict) and _is_costream_providers(p.get("include")))
        ]  # fmt: skip
        if kept:
            spec["providers"] = kept
        else:
            del spec["providers"]
    transforms = spec["pipeline"].get("transforms")
    if not isinstance(transforms, list) or not transforms:
        raise SpecError(f"{path}: 'pipeline.transforms' must be a non-empty list of transforms.")
    built: dict[int, Any] = {}
    lines = _transform_lines(text)
    for i, t in enumerate(transforms):
        label = f"{_where(path, lines, i)}: transform #{i + 1}"
        if not isinstance(t, dict) or "type" not in t:
            raise SpecError(f"{label} has no 'type:'.")
        label = _label(path, lines, i, t)
        try:
            t["config"] = configs.expand_env(t.get("config") or {})
        except ConfigError as e:
            raise SpecError(f"{label}: {e}") from e
        if not isinstance(t["config"], dict):
            raise SpecError(f"{label}: 'config' must be a mapping of keys to values.")
        _renamed(t, label)
        if t["type"] in TYPES:
            built[i] = _check(t, label, path, overrides, defaults)
    _check_dead_letters_consumed(spec["pipeline"], path, lines)
    _check_feature_sizes(transforms, built, path, lines)
    return spec


def _transform_lines(text: str) -> list[int]:
    """The line (1-based) where each entry of ``pipeline.transforms`` starts; [] if not found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    for node in (root,) if isinstance(root, yaml.MappingNode) else ():
        for k, v in node.value:
            if k.value != "pipeline" or not isinstance(v, yaml.MappingNode):
                continue
            for k2, v2 in v.value:
                if k2.value == "transforms" and isinstance(v2, yaml.SequenceNode):
                    return [item.start_mark.line + 1 for item in v2.value]
    return []


def _where(path: Path, lines: list[int], i: int) -> str:
    """``path`` with the line of transform ``i`` where known: ``spec.yaml, line 12``."""
    return f"{path}, line {lines[i]}" if i < len(lines) else str(path)


def _label(path: Path, lines: list[int], i: int, t: dict[str, Any]) -> str:
    """How errors name transform ``i``: its file and line, name and type."""
    return f"{_where(path, lines, i)}: transform {t.get('name', t['type'])!r} (type {t['type']})"


_REPO_ROOT = configs.PACKAGE_ROOT


def _check(
    t: dict[str, Any],
    label: str,
    path: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None,
    defaults: Mapping[str, Mapping[str, Any]] | None,
) -> Any:
    """Validate one costream transform's config in place; returns its Python PTransform."""
    from . import yaml_transforms

    name, config = t["type"], t["config"]
    for key, value in _for_type(defaults, name).items():
        config.setdefault(key, value)
    config.update(_for_type(overrides, name))
    for key in configs.path_keys(name):
        if isinstance(config.get(key), str):
            # as given (cwd), else beside the spec, else in the repository / package
            config[key] = configs.resolve_path(config[key], path.parent, _REPO_ROOT)
    try:
        transform = yaml_transforms.for_spec(name)(**config)
        target = transform.build()
    except ConfigError as e:
        message = str(e).removeprefix(f"{name}: ")
        raise SpecError(f"{label}: {message}") from e
    # the values as the transform takes them (numbers from ${...} text), for the given keys
    t["config"] = {key: getattr(transform.config, key) for key in config}
    return target


def _check_dead_letters_consumed(pipeline: dict[str, Any], path: Path, lines: list[int]) -> None:
    """Every costream dead-letter output must feed some transform (Beam checks it later too)."""
    if pipeline.get("type") == "chain":
        return  # a chain's inputs are implicit; Beam's own check covers it
    consumed = {ref for t in pipeline["transforms"] for ref in _inputs(t)}
    for i, t in enumerate(pipeline["transforms"]):
        handling = t["config"].get("error_handling") if t["type"] in TYPES else None
        if not handling:
            continue
        ref = f"{t.get('name', t['type'])}.{handling['output']}"
        if ref not in consumed:
            raise SpecError(
                f"{_label(path, lines, i, t)}: its dead "
                f"letters ({ref}) go nowhere; send them to a WriteDeadLettersToKafka (through a "
                "Flatten of every dead-letter output)."
            )


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


def _check_feature_sizes(
    transforms: list[dict[str, Any]], built: Mapping[int, Any], path: Path, lines: list[int]
) -> None:
    """Refuse a ContinualInference whose model takes another feature size than its input gives.

    The model's size is ``feature_dim`` on its weights file's card; the input's is the
    ``feature_dim`` of the ``ExtractFeatures`` it reads (``ExtractFeatures``, or its
    ``.output``): the ResNet's width, the log-mel token size or the identity backbone's ``dim``.
    Otherwise every frame would be dead-lettered at stage inference while the job runs and exits
    0. Skipped where a size is not known here: an identity backbone without ``dim``, weights that
    are not a file on this machine (a cluster path), an input that is not an ``ExtractFeatures``.
    """
    by_name = {t.get("name", t["type"]): i for i, t in enumerate(transforms)}
    for j, t in enumerate(transforms):
        weights = t["config"].get("weights") if t["type"] == "ContinualInference" else None
        if not isinstance(weights, str) or not Path(weights).is_file():
            continue
        label = _label(path, lines, j, t)
        for ref in _inputs(t):
            i = by_name.get(ref, by_name.get(ref.rpartition(".")[0]))
            if i is None or transforms[i]["type"] != "ExtractFeatures":
                continue
            source = transforms[i]
            produced = built[i].feature_dim
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
                source_name = source.get("name", source["type"])
                backbone = source["config"].get("backbone", "resnet18")
                raise SpecError(
                    f"{label}: the model {weights} takes features of size {expected}, but its "
                    f"input {source_name!r} (backbone {backbone!r}) produces features of size "
                    f"{produced}; use a model trained on {produced}-value features, or a backbone "
                    f"that produces {expected}."
                )


def build_pipeline(
    pipeline: Any,
    spec: dict[str, Any],
    replace: Mapping[str, Callable[..., Any]] | None = None,
    *,
    run_ends: bool = False,
) -> Any:
    """Expand a validated spec into ``pipeline`` with the costream providers registered.

    ``replace`` swaps the Python PTransform behind a type, keyed by the type's name or its
    Python class's name (``costream score`` replaces ``ReadFromKafka``, ``WriteToKafka`` and
    ``WriteDeadLetters`` by a file source and collectors); it takes the Python keywords.
    ``run_ends``: the run is meant to end by itself (``costream run --until-idle``), which some
    runner-dependent settings take into account (:mod:`costream.transforms.beam_fixes`).
    """
    from apache_beam.yaml import yaml_provider
    from apache_beam.yaml.yaml_transform import expand_pipeline

    from . import yaml_transforms

    spec = copy.deepcopy(spec)
    used = {t["type"] for t in spec["pipeline"]["transforms"]} & TYPES.keys()
    replace = replace or {}
    factories = {
        name: yaml_transforms.for_spec(
            name, replace.get(name) or replace.get(TYPES[name].python_name), run_ends=run_ends
        )
        for name in used
    }
    inline = yaml_provider.InlineProvider(factories)
    # Beam YAML tracks transforms by ids its own loader attaches, so hand it text, not a dict.
    text = yaml.safe_dump(spec, sort_keys=False)
    return expand_pipeline(
        pipeline, text, providers={name: [inline] for name in factories}, validate_schema=None
    )
