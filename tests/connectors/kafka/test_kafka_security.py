"""SASL/PLAIN and SSL against Apache Kafka: round trips, and one clear error when access fails.

One secured broker per module: a SASL_PLAINTEXT listener with a PLAIN user and an SSL listener
whose certificate is signed by a CA this module makes (``cryptography``); the PLAINTEXT listener
is where the tests publish inputs and read outputs. Passwords reach the clients through
environment variables (``{"from_env": ...}``), never literals in the transform's config.
"""

import datetime
import ipaddress
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors.broker import (
    BrokerError,
    KafkaBroker,
    kafka_classpath,
    sasl_plain_properties,
    ssl_pem_properties,
)
from costream.connectors.contract import OutgoingRecord
from costream.connectors.kafka import (
    KafkaSecurityError,
    ReadFromKafka,
    WriteToKafka,
    check_security,
)

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

pytestmark = pytest.mark.integration

USER, PASSWORD, PASSWORD_ENV = "alice", "alice-secret-7", "COSTREAM_TEST_KAFKA_PASSWORD"


# --- certificates made here ----------------------------------------------------------------


def _certificate(subject, key, issuer, issuer_key, *, ca, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _make_ca(tmp, name):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, name, key, ca=True)
    path = tmp / f"{name.replace(' ', '-')}.pem"
    path.write_text(_pem(cert))
    return key, cert, str(path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A started Kafka broker with SASL and TLS listeners; the CA files clients may trust."""
    try:
        kafka_classpath()
    except BrokerError as err:
        pytest.skip(str(err))
    tmp = tmp_path_factory.mktemp("kafka-security")
    ca_key, ca_cert, ca_file = _make_ca(tmp, "costream test CA")
    _, _, other_ca_file = _make_ca(tmp, "some other CA")
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = _certificate(
        "localhost", broker_key, "costream test CA", ca_key, ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )  # fmt: skip
    key_pem = broker_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    broker = KafkaBroker(
        listeners={"SASL": "SASL_PLAINTEXT", "TLS": "SSL"},
        properties={
            **sasl_plain_properties("SASL", {USER: PASSWORD}),
            **ssl_pem_properties("TLS", _pem(broker_cert) + _pem(ca_cert), key_pem),
        },
    ).start()
    try:
        yield {"broker": broker, "ca": ca_file, "other_ca": other_ca_file}
    finally:
        broker.stop()


@pytest.fixture
def topics(secured):
    broker = secured["broker"]
    names = []

    def make():
        name = f"sec-{uuid.uuid4().hex[:12]}"
        broker.create_topics([name])
        names.append(name)
        return name

    yield make
    broker.delete_topics(names)


def _sasl(password_env=PASSWORD_ENV):
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": USER,
        "sasl_plain_password": {"from_env": password_env},
    }


def _ssl(ca_file):
    return {"security_protocol": "SSL", "ssl_cafile": ca_file}


def _publish(bootstrap, topic, n):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        producer.send(topic, key=b"s", value=b"%d" % i)
    producer.flush()
    producer.close()


def _values(bootstrap, topic, n):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got, deadline = [], time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += [r.value for r in consumer.poll(200).get(tp, [])]
    consumer.close()
    return got


def _copy(endpoint, client_config, source, sink, n):
    """Read ``n`` records of ``source`` and write them to ``sink``, both over ``endpoint``."""
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    _ = (
        p
        | "Read" >> ReadFromKafka(endpoint, source, max_records=n, client_config=client_config)
        | "Out" >> beam.Map(lambda r: OutgoingRecord(r.key, r.value, []))
        | "Write" >> WriteToKafka(endpoint, sink, client_config=client_config)
    )
    p.run().wait_until_finish()


# --- round trips ---------------------------------------------------------------------------


def test_sasl_plain_round_trip_with_the_password_from_the_environment(secured, topics, monkeypatch):
    broker, source, sink = secured["broker"], topics(), topics()
    _publish(broker.bootstrap, source, 20)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    _copy(broker.endpoint("SASL"), _sasl(), source, sink, 20)
    assert _values(broker.bootstrap, sink, 20) == [b"%d" % i for i in range(20)]


def test_ssl_round_trip_with_the_test_ca(secured, topics):
    broker, source, sink = secured["broker"], topics(), topics()
    _publish(broker.bootstrap, source, 20)
    _copy(broker.endpoint("TLS"), _ssl(secured["ca"]), source, sink, 20)
    assert _values(broker.bootstrap, sink, 20) == [b"%d" % i for i in range(20)]


# --- one clear error, at once --------------------------------------------------------------


def _read_pipeline(endpoint, topic, cfg):
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    _ = p | ReadFromKafka(endpoint, topic, max_records=1, client_config=cfg)
    return p


def _write_pipeline(endpoint, topic, cfg):
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    _ = (
        p
        | beam.Create([OutgoingRecord(b"k", b"v", [])])
        | WriteToKafka(endpoint, topic, client_config=cfg)
    )
    return p


@pytest.mark.parametrize("make", [_read_pipeline, _write_pipeline], ids=["read", "write"])
def test_wrong_password_is_one_clear_error(secured, topics, monkeypatch, make):
    endpoint = secured["broker"].endpoint("SASL")
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    p = make(endpoint, topics(), _sasl())
    started = time.monotonic()
    with pytest.raises(
        Exception,
        match=rf"(ReadFromKafka|WriteToKafka): SASL/PLAIN authentication as 'alice' failed on "
        rf"{endpoint} \(bootstrap servers {endpoint}\): the broker answered "
        r"'Authentication failed: Invalid username or password'",
    ):
        p.run().wait_until_finish()
    assert time.monotonic() - started < 15  # not kafka-python's 30 s bootstrap retries


@pytest.mark.parametrize("make", [_read_pipeline, _write_pipeline], ids=["read", "write"])
def test_untrusted_certificate_is_one_clear_error(secured, topics, make):
    endpoint = secured["broker"].endpoint("TLS")
    p = make(endpoint, topics(), _ssl(secured["other_ca"]))
    started = time.monotonic()
    with pytest.raises(
        Exception,
        match=rf"(ReadFromKafka|WriteToKafka): certificate verification failed for {endpoint} "
        rf"\(bootstrap servers {endpoint}\): self-signed certificate in certificate chain\. The client "
        r"trusts the CA certificates in ssl_cafile='.*some-other-CA\.pem'",
    ):
        p.run().wait_until_finish()
    assert time.monotonic() - started < 15


def test_security_check_passes_good_settings_and_names_other_failures(secured):
    broker = secured["broker"]
    sasl, tls = [broker.endpoint("SASL")], [broker.endpoint("TLS")]
    good = {**_sasl(), "sasl_plain_password": PASSWORD}
    check_security("T", sasl, good)
    check_security("T", tls, _ssl(secured["ca"]))
    check_security("T", [broker.bootstrap], {})  # PLAINTEXT: nothing to check
    # a server that does not answer is left to the client's deadlines; the next one decides
    check_security("T", ["127.0.0.1:1", *tls], _ssl(secured["ca"]))
    with pytest.raises(
        KafkaSecurityError,
        match=r"T: 127.0.0.1:\d+ .* closed the connection during the TLS handshake\. "
        r"Is that listener's protocol SSL\?",
    ):
        check_security("T", sasl, _ssl(secured["ca"]))  # TLS to a SASL_PLAINTEXT listener
    with pytest.raises(
        KafkaSecurityError, match="the TLS settings in client_config cannot be loaded"
    ):
        check_security("T", tls, _ssl(str(secured["ca"]) + ".missing"))


def test_broker_security_properties_refuse_what_they_cannot_write():
    with pytest.raises(ValueError, match="quote, backslash, semicolon"):
        sasl_plain_properties("SASL", {"bob": 'a"b'})
    with pytest.raises(ValueError, match="must be upper case"):
        sasl_plain_properties("PLAINTEXT", {"bob": "x"})
    with pytest.raises(ValueError, match="PKCS#8"):
        ssl_pem_properties("TLS", "-----BEGIN CERTIFICATE-----\n", "-----BEGIN EC PRIVATE KEY-----")
    props = sasl_plain_properties("SASL", {"bob": "pw"})
    assert props["listener.name.sasl.plain.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required user_bob="pw";'
    )
