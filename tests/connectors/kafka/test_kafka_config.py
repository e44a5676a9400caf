"""ReadFromKafka / WriteToKafka validate their configuration in the constructor."""

import pytest

from costream.connectors.kafka import (
    ReadFromKafka,
    WriteDeadLetters,
    WriteToKafka,
    as_outgoing,
    resolve_client_config,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        (dict(start="newest"), "'earliest', 'latest', 'committed' or a timestamp"),
        (dict(start=-5), "a timestamp in ms"),
        (dict(start=True), "a timestamp in ms"),
        (dict(start="committed"), "needs a group_id"),
        (dict(max_records=0), "max_records must be a positive integer"),
        (dict(stop_after_idle_s=-1), "stop_after_idle_s must be a positive number"),
        (dict(partitions=[0, 0]), "distinct partition numbers"),
        (dict(client_config={"nope": 1}), "unknown kafka-python setting 'nope'"),
        (dict(client_config={"enable_auto_commit": True}), "never automatically"),
        (dict(client_config={"sasl_plain_password": {"env": "X"}}), "from_env"),
    ],
)
def test_read_config_is_validated_in_the_constructor(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(")):
        ReadFromKafka("127.0.0.1:9092", "t", **kwargs)


def test_bad_arguments_in_general():
    with pytest.raises(ValueError, match="host:port"):
        ReadFromKafka("", "t")
    with pytest.raises(ValueError, match="topics must be"):
        ReadFromKafka("h:1", [])
    with pytest.raises(ValueError, match="acks=2 is not valid; use 0, 1 or 'all'"):
        WriteToKafka("h:1", "t", acks=2)
    with pytest.raises(ValueError, match="pass acks as the acks argument"):
        WriteToKafka("h:1", "t", client_config={"acks": 1})
    with pytest.raises(
        ValueError, match="oversize='drop' is not valid; use 'error' or 'truncate' or 'dead_letter'"
    ):
        WriteToKafka("h:1", "t", oversize="drop")
    with pytest.raises(ValueError, match="max_request_size must be a positive integer"):
        WriteToKafka("h:1", "t", max_request_size=0)
    with pytest.raises(ValueError, match="pass max_request_size as the max_request_size argument"):
        WriteDeadLetters("h:1", "t", client_config={"max_request_size": 1 << 22})
    with pytest.raises(TypeError, match="OutgoingRecord, KafkaRecord"):
        as_outgoing("just a string")


def test_client_config_secrets_come_from_the_environment(monkeypatch):
    cfg = {"security_protocol": "SASL_SSL", "sasl_plain_password": {"from_env": "COSTREAM_TEST_PW"}}
    read = ReadFromKafka("h:1", "t", client_config=cfg)  # accepted without the variable set
    with pytest.raises(ValueError, match="'COSTREAM_TEST_PW', which is not set"):
        resolve_client_config(read._cfg.client_config)
    monkeypatch.setenv("COSTREAM_TEST_PW", "s3cret")
    assert resolve_client_config(read._cfg.client_config)["sasl_plain_password"] == "s3cret"
