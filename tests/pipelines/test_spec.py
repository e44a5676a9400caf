from pathlib import Path

import pytest

from costream.pipelines.cli import build_parser, main
from costream.pipelines.spec import SpecError, load_spec

SPECS = Path(__file__).resolve().parents[2] / "pipelines" / "specs"


@pytest.mark.parametrize("name", ["features.yaml", "video.yaml", "audio.yaml"])
def test_shipped_specs_validate(name):
    spec = load_spec(SPECS / name)
    types = [t["type"] for t in spec["pipeline"]["transforms"]]
    assert (
        types[0] == "ReadFramesFromKafka"
        and "ContinualInference" in types
        and "WriteDetectionsToKafka" in types
    )


def write(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_transform_and_key(tmp_path):
    p = write(
        tmp_path,
        """
pipeline:
  transforms:
    - type: ContinualInference
      name: Infer
      config: {weights: w.safetensors, gap_polcy: reset}
""",
    )
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert str(p) in msg and "'Infer'" in msg and "'gap_polcy'" in msg and "gap_policy" in msg


def test_errors_name_the_line_of_the_transform(tmp_path):
    p = write(
        tmp_path,
        "pipeline:\n  transforms:\n    - type: Flatten\n      input: []\n"
        "    - type: ContinualInference\n      config: {}\n",
    )
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert str(e.value).startswith(f"{p}, line 5: transform 'ContinualInference' (type ")
    p = write(tmp_path, "pipeline:\n  transforms:\n    - {}\n")
    with pytest.raises(SpecError, match=r", line 3: transform #1 has no 'type:'"):
        load_spec(p)


def test_missing_required_key_and_env(tmp_path, monkeypatch):
    p = write(
        tmp_path, "pipeline:\n  transforms:\n    - type: ContinualInference\n      config: {}\n"
    )
    with pytest.raises(SpecError, match="missing required config key.*weights"):
        load_spec(p)
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    p = write(
        tmp_path,
        "pipeline:\n  transforms:\n    - type: ContinualInference\n"
        "      config: {weights: '${NOPE_NOT_SET}', error_handling: {output: dead}}\n"
        "    - type: WriteDeadLettersToKafka\n      input: ContinualInference.dead\n"
        "      config: {bootstrap_servers: 'h:1', topic: dlq}\n",
    )
    with pytest.raises(SpecError, match="NOPE_NOT_SET is not set"):
        load_spec(p)
    monkeypatch.setenv("NOPE_NOT_SET", "x.safetensors")
    assert load_spec(p)["pipeline"]["transforms"][0]["config"]["weights"] == "x.safetensors"


def test_malformed_specs(tmp_path):
    with pytest.raises(SpecError, match="top-level 'pipeline:'"):
        load_spec(write(tmp_path, "transforms: []\n"))
    with pytest.raises(SpecError, match="no 'type:'"):
        load_spec(write(tmp_path, "pipeline:\n  transforms:\n    - config: {}\n"))
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_cli_lists_commands_and_refuses_unknown_options(capsys):
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in (
        "broker",
        "produce",
        "consume",
        "run",
        "score",
        "demo",
        "train",
        "evaluate",
        "flops",
    ):
        assert name in commands
    with pytest.raises(SystemExit):
        main(["flops", "co_oadtr_b1", "--bogus"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_env_values_become_numbers_where_the_constructor_takes_numbers(tmp_path, monkeypatch):
    p = write(
        tmp_path,
        """
pipeline:
  transforms:
    - type: ReadFramesFromKafka
      config: {bootstrap_servers: "${B:-h:1}", topic: "${T:-123}", stop_after_idle_s: "${S:-2.5}"}
    - type: ContinualInference
      input: ReadFramesFromKafka
      config: {weights: w.safetensors, max_fill: "${F:-4}", idle_timeout_s: "${I:-null}",
               error_handling: {output: dead}}
    - type: WriteDeadLettersToKafka
      input: ContinualInference.dead
      config: {bootstrap_servers: "h:1", topic: dlq}
""",
    )
    read, infer, _ = (t["config"] for t in load_spec(p)["pipeline"]["transforms"])
    assert read["topic"] == "123"  # a str parameter keeps text, even digits
    assert read["stop_after_idle_s"] == 2.5
    assert infer["max_fill"] == 4 and infer["idle_timeout_s"] is None
    monkeypatch.setenv("F", "four")
    with pytest.raises(SpecError, match="'max_fill' must be a whole number, got 'four'"):
        load_spec(p)


def test_dead_letters_are_written_by_the_truncating_writer():
    from costream.connectors.kafka import WriteDeadLetters
    from costream.pipelines.spec import resolve_type

    assert resolve_type("WriteDeadLettersToKafka") is WriteDeadLetters
    for name in ("features.yaml", "video.yaml", "audio.yaml"):
        (dlq,) = [
            t for t in load_spec(SPECS / name)["pipeline"]["transforms"]
            if t["type"] == "WriteDeadLettersToKafka"
        ]  # fmt: skip
        assert dlq["config"]["max_request_size"] == 1 << 20


ASSETS = Path(__file__).resolve().parents[2] / "pipelines" / "assets"


def _features_spec(tmp_path, extract, weights):
    return write(
        tmp_path,
        f"""
pipeline:
  transforms:
    - type: ReadFramesFromKafka
      config: {{bootstrap_servers: "h:1", topic: t}}
    - type: ExtractFeatures
      name: Features
      input: ReadFramesFromKafka
      config: {{error_handling: {{output: dead_letter}}, {extract[1:]}
    - type: ContinualInference
      name: Infer
      input: Features.output
      config: {{weights: {weights}, error_handling: {{output: dead_letter}}}}
    - type: Flatten
      name: DeadLetters
      input: [Features.dead_letter, Infer.dead_letter]
    - type: WriteDeadLettersToKafka
      input: DeadLetters
      config: {{bootstrap_servers: "h:1", topic: dlq}}
""",
    )


@pytest.mark.parametrize(
    ("extract", "weights", "produced", "expected"),
    [
        ("{backbone: identity, dim: 32}", "demo_model", 32, 64),
        ("{backbone: resnet18_small, weights: random}", "demo_model", 128, 64),
        ("{backbone: resnet18, weights: random}", "demo_video_model", 512, 128),
        ("{backbone: logmel, n_mels: 32}", "demo_audio_model", 256, 512),
        ("{backbone: identity, dim: 512}", "demo_video_model", 512, 128),
    ],
)
def test_model_input_size_must_match_the_features(tmp_path, extract, weights, produced, expected):
    w = ASSETS / f"{weights}.safetensors"
    p = _features_spec(tmp_path, extract, w)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "'Infer'" in msg and "'Features'" in msg
    assert f"takes features of size {expected}" in msg
    assert f"produces features of size {produced}" in msg


def test_matching_or_unknown_sizes_validate(tmp_path):
    w = ASSETS / "demo_model.safetensors"
    for extract in ("{backbone: identity, dim: 64}", "{backbone: identity}"):  # None: per record
        load_spec(_features_spec(tmp_path, extract, w))
    load_spec(_features_spec(tmp_path, "{backbone: resnet18_small, weights: random}",
                             ASSETS / "demo_video_model.safetensors"))  # fmt: skip
    # weights that are not a file here (a path on the cluster's workers) cannot be checked
    load_spec(_features_spec(tmp_path, "{backbone: identity, dim: 3}", "/cluster/m.safetensors"))


def test_bad_feature_config_or_weights_file_is_a_spec_error(tmp_path):
    w = ASSETS / "demo_model.safetensors"
    with pytest.raises(SpecError, match=r"'Features' \(type ExtractFeatures\): Unknown backbone"):
        load_spec(_features_spec(tmp_path, "{backbone: vgg}", w))
    not_weights = tmp_path / "w.safetensors"
    not_weights.write_bytes(b"not safetensors")
    with pytest.raises(SpecError, match="'Infer'.*'weights': Cannot read weights file"):
        load_spec(_features_spec(tmp_path, "{backbone: identity, dim: 64}", not_weights))


@pytest.mark.parametrize("name", ["features.yaml", "video.yaml", "audio.yaml", "gtzan.yaml"])
def test_shipped_specs_read_with_kafka_python_unless_told(name, monkeypatch):
    def clients() -> tuple[str, str]:
        transforms = {t["type"]: t for t in load_spec(SPECS / name)["pipeline"]["transforms"]}
        return (
            transforms["ReadFramesFromKafka"]["config"]["client"],
            transforms["WriteDetectionsToKafka"]["config"]["client"],
        )

    monkeypatch.delenv("COSTREAM_READ_CLIENT", raising=False)
    monkeypatch.delenv("COSTREAM_KAFKA_CLIENT", raising=False)
    assert clients() == ("kafka-python", "librdkafka")
    monkeypatch.setenv("COSTREAM_READ_CLIENT", "librdkafka")
    assert clients() == ("librdkafka", "librdkafka")
    monkeypatch.setenv("COSTREAM_READ_CLIENT", "kafka-python")
    monkeypatch.setenv("COSTREAM_KAFKA_CLIENT", "kafka-python")
    assert clients() == ("kafka-python", "kafka-python")
    monkeypatch.setenv("COSTREAM_READ_CLIENT", "rdkafka")
    with pytest.raises(SpecError, match=r"ReadFramesFromKafka.*'client' must be one of"):
        load_spec(SPECS / name)
