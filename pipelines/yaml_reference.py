"""The YAML reference (``docs/yaml.md``, ``costream transforms``), generated from the config dataclasses.

Every key, type, default and description comes from :data:`costream.pipelines.configs.TYPES`;
only the introduction below is prose. ``tests/pipelines/test_yaml_config.py`` checks that
``docs/yaml.md`` equals :func:`reference`; regenerate it with
``costream transforms > docs/yaml.md``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Union

from .configs import TYPES, YamlType, type_of

__all__ = ["INTRODUCTION", "reference", "section"]

INTRODUCTION = """\
# costream's Beam YAML transforms

<!-- Generated from costream/pipelines/configs/ by `costream transforms > docs/yaml.md`;
     tests/pipelines/test_yaml_config.py checks that this file is up to date. -->

costream's pipeline specs are Beam YAML. Its transforms are six YAML types, listed below, that
mix with Beam's own (`Flatten`, `Filter`, `MapToFields`, `WindowInto`, Beam's Java
`ReadFromKafka` / `WriteToKafka` ...) in one spec. `costream run SPEC` runs a spec, and so does
Beam's own entry point, `python -m apache_beam.yaml.main --yaml_pipeline_file=SPEC`.

## Names and keys

The Kafka types are `ReadFramesFromKafka`, `WriteDetectionsToKafka` and
`WriteDeadLettersToKafka`, so that they do not shadow Beam YAML's built-in `ReadFromKafka` and
`WriteToKafka`: those stay Beam's, usable in the same spec where Java and Beam's Kafka
expansion service are available. costream's readers and writers are not Beam's with other
settings: they read and write costream's stream contract (docs/stream-contract.md: a frame per record,
headers for the stream position), commit offsets only after a bundle's output is acknowledged,
rebuild stream state on restarts and publish their own dead letters.

Where costream and Beam mean the same thing the key is Beam's: `bootstrap_servers`, `topic` (the
reader also takes a list), `consumer_config` (the reader's client settings),
`producer_config_updates` (the writers'), `format` (the detection writer). Client settings are
kafka-python's; Java's dotted names are accepted (`security.protocol`). Keys Beam has and costream
does not (`schema`, `auto_offset_reset_config`...) are refused with what to write instead. The
Python classes keep their keyword arguments (`topics`, `client_config`); each key below names
the keyword it maps to where it differs.

## Outputs and dead letters

A transform that can refuse a record has two outputs: `output` and the dead-letter output named
by `error_handling: {output: NAME}`, Beam YAML's convention. With it the transform's bare name
(`input: ExtractFeatures`) is its `output`, and Beam refuses a spec in which the dead-letter
output goes nowhere. costream requires `error_handling` on these types: a spec without it is an
error before anything runs, so a dead letter is never lost unseen. Send every dead-letter
output to `WriteDeadLettersToKafka`, through a `Flatten`. The Kafka reader and the detection
writer take no `error_handling`: the records they cannot read or publish go to their
`dead_letter_topic`, acknowledged by the broker before the offset moves on or the bundle
succeeds.

## Running a spec

A spec names costream's types through the providers file installed with the package:

```yaml
providers:
  - include: "{{ costream_providers | default('pipelines/providers.yaml') }}"
```

The default is the file in a checkout, relative to the working directory (the repository).
Anywhere else, `costream providers` prints the installed file's path and
`costream providers --jinja` the flag that sets the variable:

```sh
python -m apache_beam.yaml.main --yaml_pipeline_file=pipelines/specs/features.yaml \\
    --runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner \\
    "$(costream providers --jinja)"
```

On Flink: `--runner=PortableRunner --job_endpoint=HOST:8099 --environment_type=EXTERNAL
--environment_config=HOST:50000 --streaming` (`costream flink status` prints the endpoints). Beam's
default `DirectRunner` cannot run these specs: `ContinualInference` declares a processing-time
timer, for which Beam's direct runner hands the pipeline to its bundle-based runner, which does
not run the Kafka reader's splittable DoFn. Use the FnApiRunner (what `costream run` uses), or
`--runner=PortableRunner --job_endpoint=embed`.

Values may be `${NAME}` or `${NAME:-default}`, read from the environment by the transforms
themselves (so `yaml.main` gets them too); text becomes the number, boolean or null a key takes.
A relative weights path is looked up in the working directory, then in costream's package.
`ContinualInference` takes the TTL check on the in-process runner and the idle timer on Flink
(`idle_timer: null`), and `ExtractFeatures` batches within a bundle on Flink; `costream run`
adds its own options (`--until-idle`, checkpoints on Flink, status lines).

Beam YAML's `config_schema` for these types (what `apache_beam.yaml.generate_yaml_docs` and
`--json_schema_validation=per_transform` read) comes from the same fields; a key given as
`${...}` text validates only as its type after expansion, so per-transform schema validation
needs literal values.
"""


def _type_name(tp: Any, *, plural: bool = False) -> str:
    """``tp`` for the reference: ``integer``, ``string or list of strings``, ``null``."""
    origin = typing.get_origin(tp)
    if origin is Union or isinstance(tp, type(int | None)):
        return " or ".join(_type_name(a, plural=plural) for a in typing.get_args(tp))
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is list:
        return "list of " + _type_name(typing.get_args(tp)[0], plural=True)
    if origin is dict:
        return "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    name = names.get(tp, str(tp))
    return name + "s" if plural and tp is not type(None) else name


def _default(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING:
        return "required"
    if f.default is None:
        return "null"
    if isinstance(f.default, bool):
        return str(f.default).lower()
    return f"`{f.default}`"


def _output(name: str) -> str:
    return "the output `error_handling` names" if name == "error_handling" else f"`{name}`"


def section(yt: YamlType) -> str:
    """The reference of one type: summary, keys, outputs, refused keys, an example."""
    module, cls = yt.target.split(":")
    lines = [
        f"## {yt.name}",
        "",
        (yt.config.__doc__ or "").strip(),
        "",
        f"Configures `{module}.{cls}`.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(yt.config):
        python = f.metadata.get("python")
        key = f"`{f.name}`" + (f" (`{python}`)" if python else "")
        doc = f.metadata["doc"].replace("|", "\\|")
        lines.append(
            f"| {key} | {_type_name(type_of(yt.config, f.name))} | {_default(f)} | {doc} |"
        )
    lines += ["", "Outputs:"]
    if yt.outputs:
        lines += [f"- {_output(name)}: {what}" for name, what in yt.outputs]
    else:
        lines.append("- none (a sink)")
    if yt.refused:
        lines += ["", "Not taken:"]
        lines += [f"- `{key}`: {why}" for key, why in yt.refused.items()]
    lines += ["", "Example:", "", "```yaml", yt.example, "```", ""]
    return "\n".join(lines)


def reference() -> str:
    """The whole reference: the introduction, a table of the types, then each type."""
    lines = [INTRODUCTION, "## The types", "", "| type | configures | outputs |", "|---|---|---|"]
    for yt in TYPES.values():
        outputs = ", ".join(_output(n) for n, _ in yt.outputs) or "none"
        lines.append(f"| [{yt.name}](#{yt.name.lower()}) | `{yt.python_name}` | {outputs} |")
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(section(yt) for yt in TYPES.values())
