"""costream's Beam YAML types: one config dataclass per type, used by validation, Beam's
config_schema, the YAML-facing transforms and docs/yaml.md. No broker, nothing runs."""

import dataclasses
import inspect
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from costream.pipelines import configs, yaml_transforms
from costream.pipelines.cli import main
from costream.pipelines.configs import TYPES, ConfigError, parse_config, python_kwargs
from costream.pipelines.spec import PROVIDERS_FILE, SpecError, load_spec, resolve_type
from costream.pipelines.yaml_reference import reference

ROOT = Path(__file__).resolve().parents[2]
EH = {"error_handling": {"output": "dead_letter"}}
# YAML keys whose default differs from the Python keyword's on purpose
YAML_ONLY_DEFAULTS = {("ContinualInference", "idle_timer")}  # null: chosen by the runner


@pytest.mark.parametrize("name", list(TYPES))
def test_every_python_keyword_has_a_yaml_key_with_its_default(name):
    yt = TYPES[name]
    params = inspect.signature(resolve_type(name)).parameters
    fields = {f.metadata.get("python") or f.name: f for f in dataclasses.fields(yt.config)}
    fields.pop("error_handling", None)
    assert set(fields) == set(params), "YAML keys and the Python keywords differ"
    for python, f in fields.items():
        if (name, f.name) in YAML_ONLY_DEFAULTS:
            continue
        default = params[python].default
        assert f.default == (
            dataclasses.MISSING if default is inspect.Parameter.empty else default
        ), f.name


def test_beam_key_names_map_to_the_python_keywords():
    cfg = parse_config(
        "ReadFramesFromKafka",
        {
            "bootstrap_servers": "h:1",
            "topic": ["a", "b"],
            "consumer_config": {"security.protocol": "SSL", "fetch_max_bytes": "${X:-1}"},
        },
    )
    kwargs = python_kwargs(cfg)
    assert kwargs["topics"] == ["a", "b"] and "topic" not in kwargs
    assert kwargs["client_config"] == {"security_protocol": "SSL", "fetch_max_bytes": "${X:-1}"}
    assert "group_id" not in kwargs  # null where the Python default is null: not passed
    w = parse_config(
        "WriteDetectionsToKafka",
        {"bootstrap_servers": "h:1", "topic": "t", "format": "JSON", "producer_config_updates": {}},
    )
    assert python_kwargs(w)["format"] == "json" and python_kwargs(w)["client_config"] == {}
    assert "format" not in python_kwargs(
        parse_config("WriteDetectionsToKafka", {"bootstrap_servers": "h", "topic": "t"})
    )


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("ContinualInference", {"weights": "w", "gap_polcy": "fill", **EH},
         "unknown config key 'gap_polcy' (did you mean 'gap_policy'?); valid keys are weights, "),
        ("ReadFramesFromKafka", {"bootstrap_servers": "h", "topics": "t"},
         "'topics' is not a key of ReadFramesFromKafka: the key is `topic` (Beam's name)"),
        ("ReadFramesFromKafka", {"bootstrap_servers": "h", "topic": "t", "client_config": {}},
         "the key is `consumer_config`"),
        ("ReadFramesFromKafka", {"bootstrap_servers": "h", "topic": "t", "format": "json"},
         "for JSON, Avro or Protobuf records use Beam's `ReadFromKafka`"),
        ("WriteDetectionsToKafka", {"bootstrap_servers": "h", "topic": "t", **EH},
         "Set `dead_letter_topic` instead of `error_handling`"),
        ("ExtractFeatures", {"backbone": "identity"},
         "ExtractFeatures needs error_handling: {output: NAME}"),
        ("ContinualInference", {}, "missing required config key(s) weights, error_handling."),
        ("ContinualInference", {"weights": "w", "error_handling": {"out": "x"}},
         "error_handling must be {output: NAME}"),
        ("ContinualInference", {"weights": "w", "max_fill": "four", **EH},
         "'max_fill' must be a whole number, got 'four'."),
        ("ContinualInference", {"weights": "w", "gap_policy": "hold", **EH},
         "'gap_policy' must be one of 'reset', 'fill', got 'hold'."),
        ("WriteDeadLettersToKafka", {"bootstrap_servers": "h", "topic": 7},
         "'topic' must be text, got 7."),
        ("ReadFramesFromKafka", {"bootstrap_servers": "h", "topic": "t", "partitions": [0, "x"]},
         "'partitions' must be a list of whole numbers, got [0, 'x']."),
    ],
)  # fmt: skip
def test_config_errors_name_the_key_and_what_is_right(name, config, message):
    with pytest.raises(ConfigError) as e:
        parse_config(name, config)
    assert message in str(e.value)


def test_text_becomes_what_the_field_takes():
    read = parse_config(
        "ReadFramesFromKafka",
        {"bootstrap_servers": "h", "topic": "123", "start": "1700000000000",
         "stop_after_idle_s": "2", "idle_partition_s": "null", "group_id": "7"},
    )  # fmt: skip
    assert read.topic == "123" and read.group_id == "7"  # text stays text where text is taken
    assert read.start == 1_700_000_000_000 and read.stop_after_idle_s == 2.0
    assert read.idle_partition_s is None
    assert (
        parse_config(
            "ReadFramesFromKafka", {"bootstrap_servers": "h", "topic": "t", "start": "committed"}
        ).start
        == "committed"
    )
    infer = parse_config(
        "ContinualInference", {"weights": "w", "idle_timer": "false", "max_jump": "9", **EH}
    )
    assert infer.idle_timer is False and infer.max_jump == 9
    write = parse_config(
        "WriteDetectionsToKafka", {"bootstrap_servers": "h", "topic": "t", "acks": "1"}
    )
    assert write.acks == 1
    with pytest.raises(ConfigError, match="'acks' must be one of 'all', 0, 1, -1, got '2'"):
        parse_config(
            "WriteDetectionsToKafka", {"bootstrap_servers": "h", "topic": "t", "acks": "2"}
        )
    assert parse_config("DecodeFrames", {"image_size": "224", **EH}).image_size == 224


def test_the_installed_providers_file_gives_beam_the_config_schema():
    from apache_beam.yaml import yaml_provider

    (provider,) = yaml_provider.parse_providers([{"include": str(PROVIDERS_FILE)}])
    assert list(provider.provided_transforms()) == list(TYPES)
    for name, yt in TYPES.items():
        schema = provider.config_schema(name)
        assert [f.name for f in schema.fields] == [f.name for f in dataclasses.fields(yt.config)]
        docs = {f.name: f.description for f in schema.fields}
        assert all(docs[f.name] == f.metadata["doc"] for f in dataclasses.fields(yt.config))
        assert provider.description(name).startswith(yt.config.__doc__.strip())
        assert provider.requires_inputs(name, {}) == (name != "ReadFramesFromKafka")
    fields = {f.name: f.type for f in provider.config_schema("ContinualInference").fields}
    assert fields["max_fill"].nullable and fields["max_fill"].atomic_type == 4  # INT64
    assert fields["weights"].atomic_type == 7 and not fields["weights"].nullable  # STRING
    assert [f.name for f in fields["error_handling"].row_type.schema.fields] == ["output"]


def test_providers_file_is_package_data():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "providers.yaml" in data["package-data"]["costream.pipelines"]
    assert data["package-dir"]["costream.pipelines"] == PROVIDERS_FILE.parent.name


def test_docs_yaml_md_is_up_to_date():
    assert (ROOT / "docs" / "yaml.md").read_text() == reference(), (
        "docs/yaml.md is stale: regenerate it with `costream transforms > docs/yaml.md`"
    )


def test_transforms_command_prints_the_reference(capsys):
    assert main(["transforms"]) == 0
    assert capsys.readouterr().out == reference()
    assert main(["transforms", "ContinualInference"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## ContinualInference\n") and "| `weights` | string | required |" in out
    assert "## ExtractFeatures" not in out and "- type: ContinualInference" in out
    with pytest.raises(SystemExit, match="Did you mean ContinualInference?"):
        main(["transforms", "Continual"])


def test_providers_command_prints_the_installed_file(capsys):
    assert main(["providers"]) == 0
    assert Path(capsys.readouterr().out.strip()) == PROVIDERS_FILE
    assert main(["providers", "--jinja"]) == 0
    flag = capsys.readouterr().out.strip()
    assert flag.startswith("--jinja_variables=")
    assert json.loads(flag.split("=", 1)[1]) == {"costream_providers": str(PROVIDERS_FILE)}


def test_yaml_transforms_expand_env_and_resolve_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the weights are found in the package
    monkeypatch.delenv("W", raising=False)
    t = yaml_transforms.ContinualInference(
        weights="${W:-pipelines/assets/demo_model.safetensors}", max_fill="${F:-3}", **EH
    )
    kwargs = t.python_kwargs(None)
    assert kwargs["weights"] == str(
        configs.PACKAGE_ROOT / "pipelines/assets/demo_model.safetensors"
    )
    assert Path(kwargs["weights"]).is_file() and kwargs["max_fill"] == 3
    with pytest.raises(
        ConfigError, match="ContinualInference: environment variable NOPE is not set"
    ):
        yaml_transforms.ContinualInference(weights="${NOPE}", **EH)
    with pytest.raises(
        ConfigError, match="ReadFramesFromKafka: start='committed' needs a group_id"
    ):
        yaml_transforms.ReadFramesFromKafka(
            bootstrap_servers="h:1", topic="t", start="committed"
        ).build()
    with pytest.raises(ConfigError, match=r"^ReadFramesFromKafka: topic must be a topic name"):
        yaml_transforms.ReadFramesFromKafka(bootstrap_servers="h:1", topic=[]).build()


def _pipeline(*args):
    return beam.Pipeline(options=PipelineOptions(list(args)))


def test_idle_timer_and_batching_follow_the_runner():
    infer = yaml_transforms.ContinualInference(weights="/m.safetensors", **EH)
    features = yaml_transforms.ExtractFeatures(backbone="identity", **EH)
    in_process = [
        beam.Pipeline(runner=FnApiRunner()),
        _pipeline("--runner=PortableRunner", "--job_endpoint=embed"),
        _pipeline(),  # Beam's DirectRunner
    ]
    for p in in_process:
        assert infer.python_kwargs(p)["idle_timer"] is False
        assert features.python_kwargs(p)["max_batch_duration_secs"] == 0.05
    for p in (_pipeline("--runner=PortableRunner", "--job_endpoint=localhost:8099"),
              _pipeline("--runner=FlinkRunner")):  # fmt: skip
        assert infer.python_kwargs(p)["idle_timer"] is True
        assert features.python_kwargs(p)["max_batch_duration_secs"] is None
    explicit = yaml_transforms.ContinualInference(weights="/m", idle_timer=True, **EH)
    assert explicit.python_kwargs(beam.Pipeline(runner=FnApiRunner()))["idle_timer"] is True


SPEC = """\
providers:
  - include: "{{{{ costream_providers | default('pipelines/providers.yaml') }}}}"
pipeline:
  transforms:
    - type: ReadFramesFromKafka
      config: {{bootstrap_servers: "127.0.0.1:1", topic: t}}
    - type: ExtractFeatures
      input: ReadFramesFromKafka
      config: {{backbone: identity, dim: 64{features}}}
    - type: ContinualInference
      input: ExtractFeatures
      config: {{weights: pipelines/assets/demo_model.safetensors, error_handling: {{output: bad}}}}
    - type: WriteDetectionsToKafka
      input: ContinualInference
      config: {{bootstrap_servers: "127.0.0.1:1", topic: out}}
    - type: Flatten
      name: DeadLetters
      input: [{dead_letters}]
    - type: WriteDeadLettersToKafka
      input: DeadLetters
      config: {{bootstrap_servers: "127.0.0.1:1", topic: dlq}}
"""


def _expand(text):
    """Build (not run) a spec the way apache_beam.yaml.main does."""
    import yaml
    from apache_beam.yaml import yaml_transform

    rendered = yaml_transform.expand_jinja(text, {})
    spec = yaml.load(rendered, Loader=yaml_transform.SafeLineLoader)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        yaml_transform.expand_pipeline(p, spec)
        raise _Built(p)


class _Built(Exception):
    pass


def test_beam_builds_a_shipped_style_spec_and_checks_its_dead_letters(monkeypatch):
    monkeypatch.chdir(ROOT)
    good = SPEC.format(features=", error_handling: {output: dead_letter}",
                       dead_letters="ExtractFeatures.dead_letter, ContinualInference.bad")  # fmt: skip
    with pytest.raises(_Built) as built:
        _expand(good)
    labels = {t.full_label for t in built.value.args[0].transforms_stack[0].parts}
    assert {"ReadFramesFromKafka", "ExtractFeatures", "ContinualInference"} <= labels
    without = SPEC.format(features="", dead_letters="ContinualInference.bad")
    with pytest.raises(Exception, match="ExtractFeatures needs error_handling"):
        _expand(without)
    unconsumed = SPEC.format(features=", error_handling: {output: dead_letter}",
                             dead_letters="ContinualInference.bad")  # fmt: skip
    with pytest.raises(Exception, match="Unconsumed error output.*ExtractFeatures.dead_letter"):
        _expand(unconsumed)


def test_load_spec_checks_dead_letters_and_names_earlier_types(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(SPEC.format(features=", error_handling: {output: dead_letter}",
                             dead_letters="ContinualInference.bad"))  # fmt: skip
    with pytest.raises(
        SpecError, match=r"'ExtractFeatures'.*\(ExtractFeatures.dead_letter\) go nowhere"
    ):
        load_spec(p)
    p.write_text(SPEC.format(features=", error_handling: {output: dead_letter}",
                             dead_letters="ExtractFeatures.dead_letter, ContinualInference.bad"))  # fmt: skip
    assert "providers" not in load_spec(p)  # costream's own include: build_pipeline registers them
    text = p.read_text()
    p.write_text(text.replace("type: WriteDeadLettersToKafka", "type: WriteDeadLetters"))
    with pytest.raises(
        SpecError, match="costream's WriteDeadLetters is now WriteDeadLettersToKafka"
    ):
        load_spec(p)
    read = 'type: ReadFramesFromKafka\n      config: {bootstrap_servers: "127.0.0.1:1", topic: t}'
    assert read in text
    p.write_text(
        text.replace(read, read.replace("Frames", "").replace("topic: t", "topics: t, group_id: g"))
    )
    with pytest.raises(SpecError, match=(
        r"ReadFromKafka is Beam's Java Kafka transform, which has no key\(s\) group_id, topics; "
        "costream's is ReadFramesFromKafka"
    )):  # fmt: skip
        load_spec(p)
    p.write_text(text.replace(read, read.replace("topic: t", "topics: t")))
    with pytest.raises(SpecError, match="'topics' is not a key of ReadFramesFromKafka"):
        load_spec(p)
    # Beam's own Kafka reader with Beam's keys: left to Beam
    beams = read.replace("Frames", "").replace("topic: t", "topic: t, format: RAW")
    p.write_text(text.replace(read, beams))
    (t,) = [t for t in load_spec(p)["pipeline"]["transforms"] if t["type"] == "ReadFromKafka"]
    assert t["config"] == {"bootstrap_servers": "127.0.0.1:1", "topic": "t", "format": "RAW"}


BEAM_KAFKA_JAR = "beam-sdks-java-io-expansion-service-2.62.0.jar"


def test_beams_kafka_types_stay_beams():
    """Beam's ReadFromKafka / WriteToKafka resolve to Beam's Java providers, costream's do not
    take their names, and load_spec leaves a Beam Kafka transform with Beam's keys alone."""
    from apache_beam.yaml import yaml_provider

    (costream,) = yaml_provider.parse_providers([{"include": str(PROVIDERS_FILE)}])
    assert not {"ReadFromKafka", "WriteToKafka"} & set(costream.provided_transforms())
    standard = yaml_provider.standard_providers()
    for name, urn in [("ReadFromKafka", "kafka_read"), ("WriteToKafka", "kafka_write")]:
        (beams,) = standard[name]
        java = beams.underlying_provider()
        assert isinstance(java, yaml_provider.ExternalJavaProvider)
        assert java._urns[name] == f"beam:schematransform:org.apache.beam:{urn}:v1"
        assert java._jar_provider().endswith(BEAM_KAFKA_JAR)


def test_a_spec_mixes_beams_java_kafka_writer_with_costream(tmp_path, monkeypatch):
    from apache_beam.utils.subprocess_server import JavaJarServer

    jar = Path(JavaJarServer.JAR_CACHE) / BEAM_KAFKA_JAR
    if not jar.exists():
        pytest.skip(
            f"Beam's Kafka expansion service org.apache.beam:beam-sdks-java-io-expansion-service:"
            f"2.62.0 is not on this machine ({jar}; Maven Central has no 2.62.0 of it)"
        )
    monkeypatch.chdir(ROOT)
    spec = SPEC.format(features=", error_handling: {output: dead_letter}",
                       dead_letters="ExtractFeatures.dead_letter, ContinualInference.bad")  # fmt: skip
    spec += """\
    - type: MapToFields
      input: ContinualInference
      config: {language: python, fields: {stream_id: stream_id, top_score: top_score}}
    - type: WriteToKafka
      input: MapToFields
      config: {bootstrap_servers: "127.0.0.1:1", topic: beam, format: JSON}
"""
    with pytest.raises(_Built):
        _expand(spec)


def test_continual_inference_batching_and_state_dtype_keys_reach_the_transform():
    cfg = parse_config(
        "ContinualInference",
        {"weights": "/m.safetensors", "batch_streams": "true", "shards": 4, "max_batch": "8",
         "max_delay_ms": 5, "state_dtype": "bfloat16", **EH},
    )  # fmt: skip
    kwargs = python_kwargs(cfg)
    assert {k: kwargs[k] for k in ("batch_streams", "shards", "max_batch", "max_delay_ms")} == {
        "batch_streams": True, "shards": 4, "max_batch": 8, "max_delay_ms": 5.0,
    }  # fmt: skip
    assert kwargs["state_dtype"] == "bfloat16"
    defaults = python_kwargs(parse_config("ContinualInference", {"weights": "/m", **EH}))
    assert (defaults["batch_streams"], defaults["shards"], defaults["max_batch"]) == (False, 16, 64)
    assert (defaults["max_delay_ms"], defaults["state_dtype"]) == ("auto", "float32")
    no_delay = parse_config("ContinualInference", {"weights": "/m", "max_delay_ms": None, **EH})
    assert python_kwargs(no_delay)["max_delay_ms"] is None  # groups cut at bundle ends only
    auto = parse_config("ContinualInference", {"weights": "/m", "max_delay_ms": "auto", **EH})
    assert python_kwargs(auto)["max_delay_ms"] == "auto"
    with pytest.raises(ConfigError, match="max_delay_ms"):
        parse_config("ContinualInference", {"weights": "/m", "max_delay_ms": "soon", **EH})
    with pytest.raises(ConfigError, match="'state_dtype' must be one of 'float32', 'float16', "):
        parse_config("ContinualInference", {"weights": "w", "state_dtype": "half", **EH})


def test_extract_features_log_mel_keys_are_log_mel_options_fields():
    from costream.models.logmel import LogMelOptions

    options = LogMelOptions()
    fields = {f.name: f for f in dataclasses.fields(TYPES["ExtractFeatures"].config)}
    for name in ("rate", "n_mels", "patch", "hop_length", "win_length", "n_fft"):
        assert fields[name].default == getattr(options, name), name
