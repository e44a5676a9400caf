import socket

import pytest
from costream.connectors.broker import BrokerError, EmbeddedBroker
from kafka import KafkaAdminClient


def test_start_create_delete_stop():
    with EmbeddedBroker() as broker:
        assert broker.running
        host, port = broker.bootstrap.split(":")
        broker.create_topics(["a", "b"], partitions=3)
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        assert {"a", "b"} <= set(admin.list_topics())
        assert len(admin.describe_topics(["a"])[0]["partitions"]) == 3
        broker.delete_topics(["a", "missing"])
        assert "a" not in admin.list_topics()
        with pytest.raises(BrokerError, match="already exist"):
            broker.create_topics(["b"])
        admin.close()
        proc = broker._proc
    assert not broker.running and proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=0.5).close()
    broker.stop()  # idempotent


def test_busy_port_fails_with_the_broker_output():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"Port {port} on 127.0.0.1 is already in use"):
            EmbeddedBroker(port, start_timeout_s=5).start()


def test_bad_binary_and_port():
    with pytest.raises(ValueError, match="1..65535"):
        EmbeddedBroker(70000)
    with pytest.raises((BrokerError, OSError)):
        EmbeddedBroker(binary="/nonexistent/tansu").start()
    with pytest.raises(BrokerError, match="not running"):
        _ = EmbeddedBroker().bootstrap
