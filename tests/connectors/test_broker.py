import socket

import pytest
from kafka import KafkaAdminClient

from costream.connectors.broker import BrokerError, EmbeddedBroker


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


def _connected_then_stopped(broker):
    """Leave the broker's port in TIME_WAIT: a client talks to it, then the broker stops first."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    c.topics()
    port = broker.port
    broker.stop()
    c.close()
    return port


def test_a_just_freed_port_is_reused_at_once():
    broker = EmbeddedBroker().start()
    port = _connected_then_stopped(broker)
    with EmbeddedBroker(port) as again:  # used to be refused for about a minute (TIME_WAIT)
        assert again.bootstrap == f"127.0.0.1:{port}"


def test_kafka_broker_keeps_its_data_across_a_restart_on_the_same_dir(tmp_path):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from costream.connectors.broker import KafkaBroker, kafka_classpath

    try:
        kafka_classpath()
    except BrokerError as err:
        pytest.skip(str(err))
    broker = KafkaBroker(data_dir=tmp_path / "kafka").start()
    try:
        broker.create_topics(["frames"], partitions=2)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        for i in range(6):
            producer.send("frames", key=b"k", value=b"v%d" % i, partition=i % 2)
        producer.flush()
        producer.close()
        c = KafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id="g", enable_auto_commit=False
        )
        c.commit({TopicPartition("frames", 0): OffsetAndMetadata(2, "", -1)})
        c.close()
        pid, port = broker.pid, _connected_then_stopped(broker)
        assert not broker.running

        broker.start()  # same dir, same port (just freed): the data and the offsets are there
        assert broker.pid != pid and broker.port == port
        assert "frames" in broker.admin().list_topics()
        c = KafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id="g", enable_auto_commit=False
        )
        tps = [TopicPartition("frames", p) for p in (0, 1)]
        assert c.committed(tps[0]) == 2
        assert c.end_offsets(tps) == {tps[0]: 3, tps[1]: 3}
        c.close()
        broker.kill()  # a crash, then a restart: still there
        broker.start()
        c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        assert c.end_offsets(tps) == {tps[0]: 3, tps[1]: 3}
        c.close()
    finally:
        broker.stop()
    assert (tmp_path / "kafka" / "log" / "meta.properties").exists()  # a given dir is kept


def test_make_broker_refuses_unknown_kinds_and_tansu_data_dirs():
    from costream.connectors.broker import make_broker

    with pytest.raises(
        ValueError, match="Unknown broker kind 'redpanda'; use one of 'tansu', 'kafka'"
    ):
        make_broker("redpanda")
    with pytest.raises(ValueError, match="data_dir is for kind 'kafka'"):
        make_broker("tansu", data_dir="/tmp/x")
