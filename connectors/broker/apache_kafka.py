"""The Apache Kafka broker (``"kafka"``): KRaft combined mode, one node, run with ``java``.

The jars (``KAFKA_VERSION``) are the ones ``scripts/fetch_jars.sh`` copies from Maven Central
into ``$COSTREAM_CACHE/kafka-<version>/lib``. Its log lives in a data directory: a restart on
the same ``data_dir`` keeps every topic, record and committed offset. Starts in 2-4 s; needs
Java 17+. :func:`sasl_plain_properties` and :func:`ssl_pem_properties` give a listener
SASL/PLAIN users or a PEM certificate.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping

from costream.connectors.broker.process import BrokerError, _BrokerProcess, _free_port, _port_free

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "kafka_classpath",
    "sasl_plain_properties",
    "ssl_pem_properties",
]

KAFKA_VERSION = "4.1.1"
"""Apache Kafka release the jars are fetched for (deploy/jars/kafka.pom.xml keeps it in step)."""


def kafka_classpath() -> str:
    """The ``java -cp`` value for Apache Kafka's jars (``$COSTREAM_KAFKA_LIB`` or the cache)."""
    lib = os.environ.get("COSTREAM_KAFKA_LIB") or os.path.join(
        os.environ.get("COSTREAM_CACHE") or os.path.expanduser("~/.cache/costream"),
        f"kafka-{KAFKA_VERSION}",
        "lib",
    )
    if not os.path.isfile(os.path.join(lib, f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise BrokerError(
            f"Apache Kafka {KAFKA_VERSION}'s jars are not in {lib}; fetch them with "
            "./scripts/fetch_jars.sh (Maven Central), or point COSTREAM_KAFKA_LIB at a folder "
            "holding them."
        )
    return os.path.join(lib, "*")


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerError(
            "The Kafka broker needs Java 17 or newer: no 'java' on PATH or JAVA_HOME."
        )
    return java


class KafkaBroker(_BrokerProcess):
    """Apache Kafka in KRaft combined mode (one node) on ``host:port``, its log in ``data_dir``.

    ``data_dir`` holds the broker's log (``log/``), its generated ``server.properties`` and its
    own log file ``server.log``. Without one, a temporary directory is used and removed on stop.
    A first start formats the directory (a new cluster id); a start on a formatted directory
    keeps its data (topics, records, committed offsets), so ``stop()``/``kill()`` then
    ``start()`` is a broker restart on the same port.

    ``listeners`` adds listeners beside the PLAINTEXT one that ``bootstrap`` names and the admin
    client uses: ``{"SASL": "SASL_PLAINTEXT", "TLS": "SSL"}`` maps a listener name to its
    security protocol; each gets a free port (see :meth:`endpoint`). ``properties`` are extra
    ``server.properties`` lines, merged last (e.g. a listener's JAAS config or key store).

    ``stop()`` sends SIGTERM (a clean shutdown, about a second) and SIGKILL after
    ``stop_timeout_s``; :meth:`kill` simulates a crash. The JVM heap is ``heap_mb``.

    A secured broker: SASL/PLAIN users on one listener, TLS with a PEM certificate on another
    (:func:`sasl_plain_properties`, :func:`ssl_pem_properties`); the PLAINTEXT listener stays
    for the admin client and between broker and controller.

    Example:
        >>> broker = KafkaBroker(  # doctest: +SKIP
        ...     listeners={"SASL": "SASL_PLAINTEXT", "TLS": "SSL"},
        ...     properties={**sasl_plain_properties("SASL", {"alice": "alice-secret"}),
        ...                 **ssl_pem_properties("TLS", cert_chain_pem, key_pem)},
        ... ).start()
        >>> broker.endpoint("TLS")  # doctest: +SKIP
        '127.0.0.1:40125'
    """

    kind = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        data_dir: str | os.PathLike[str] | None = None,
        listeners: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        heap_mb: int = 512,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 20.0,
    ) -> None:
        super().__init__(
            port, host=host, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
        )
        extra = dict(listeners or {})
        for name, protocol in extra.items():
            if name in ("PLAINTEXT", "CONTROLLER") or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise ValueError(
                    f"listener name {name!r} must be upper case and not PLAINTEXT or CONTROLLER."
                )
            if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
                raise ValueError(
                    f"listener {name!r} has protocol {protocol!r}; use PLAINTEXT, SSL, "
                    "SASL_PLAINTEXT or SASL_SSL."
                )
        self._listeners = extra
        self._listener_ports: dict[str, int] = {}
        self._properties = dict(properties or {})
        self.heap_mb = heap_mb
        self._given_dir = None if data_dir is None else os.fspath(data_dir)
        self.data_dir: str | None = self._given_dir

    def endpoint(self, listener: str = "PLAINTEXT") -> str:
        """``host:port`` of one listener while running."""
        if listener == "PLAINTEXT":
            return self.bootstrap
        if listener not in self._listener_ports or not self.running:
            raise BrokerError(f"The broker has no running listener {listener!r}.")
        return f"{self.host}:{self._listener_ports[listener]}"

    def _server_properties(self, controller_port: int) -> str:
        assert self.data_dir is not None and self.port is not None
        names = {"PLAINTEXT": ("PLAINTEXT", self.port)}
        for name, protocol in self._listeners.items():
            names[name] = (protocol, self._listener_ports[name])
        listeners = [f"{n}://{self.host}:{p}" for n, (_, p) in names.items()]
        protocols = [f"{n}:{proto}" for n, (proto, _) in names.items()]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{controller_port}",
            "listeners": ",".join([*listeners, f"CONTROLLER://{self.host}:{controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join([*protocols, "CONTROLLER:PLAINTEXT"]),
            "log.dirs": os.path.join(self.data_dir, "log"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # a restart after a crash waits out the old broker session: keep it short
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            "log.flush.interval.messages": "1",  # a killed broker loses nothing it acknowledged
            **self._properties,
        }
        return "".join(f"{k}={_property_value(v)}\n" for k, v in props.items())

    def _launch(self, log: int) -> subprocess.Popen[bytes]:
        java, classpath = _java(), kafka_classpath()
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="costream-kafka-")
        os.makedirs(self.data_dir, exist_ok=True)
        for name in self._listeners:
            port = self._listener_ports.get(name)
            if port is None or not _port_free(self.host, port):
                self._listener_ports[name] = _free_port(self.host)
        config = os.path.join(self.data_dir, "server.properties")
        with open(config, "w") as f:
            f.write(self._server_properties(_free_port(self.host)))
        log4j = os.path.join(self.data_dir, "log4j2.properties")
        with open(log4j, "w") as f:
            f.write(_LOG4J2.format(path=os.path.join(self.data_dir, "server.log")))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "JAVA_TOOL"))}
        jvm = [java, f"-Xmx{self.heap_mb}m", "-Xms64m", "-XX:+UseSerialGC",
               f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]  # fmt: skip
        if not os.path.exists(os.path.join(self.data_dir, "log", "meta.properties")):
            cluster_id = "-"
            while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid: "-..." reads as a flag
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            fmt = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", config],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                timeout=self.start_timeout_s,
            )
            if fmt.returncode != 0:
                raise BrokerError(
                    f"Formatting the Kafka data directory {self.data_dir} failed: "
                    f"{(fmt.stdout + fmt.stderr).decode('utf-8', 'replace')}"
                )
        return subprocess.Popen(
            [*jvm, "kafka.Kafka", config],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
        )

    def output(self) -> str:
        """The JVM's own output plus the tail of the broker's ``server.log``."""
        text = super().output()
        path = None if self.data_dir is None else os.path.join(self.data_dir, "server.log")
        if path is not None and os.path.exists(path):
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 6000))
                text += "\n[server.log, last lines]\n" + f.read().decode("utf-8", "replace")
        return text

    def _wait_for_metadata(self, names: list[str]) -> None:
        # KRaft answers CreateTopics before every listener's metadata cache has the topics.
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, client_id="costream-wait")
        try:
            deadline = time.monotonic() + 10
            for name in names:
                while not consumer.partitions_for_topic(name) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            consumer.close()

    def _cleanup(self) -> None:
        if self._given_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def _property_value(value: str) -> str:
    # java.util.Properties syntax: a backslash escapes, a line break ends the value. PEM text
    # (ssl_pem_properties) spans lines, so write them as \n escapes.
    return str(value).replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _listener_prefix(listener: str) -> str:
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", listener) or listener in ("PLAINTEXT", "CONTROLLER"):
        raise ValueError(
            f"listener name {listener!r} must be upper case and not PLAINTEXT or CONTROLLER."
        )
    return f"listener.name.{listener.lower()}."


def sasl_plain_properties(listener: str, users: Mapping[str, str]) -> dict[str, str]:
    """``server.properties`` lines that make ``listener`` accept SASL/PLAIN for ``users``.

    ``users`` maps user names to passwords (``PlainLoginModule``'s ``user_<name>="<password>"``
    entries in the listener's JAAS config). The listener's protocol must be ``SASL_PLAINTEXT``
    or ``SASL_SSL`` (see :class:`KafkaBroker`'s ``listeners``).
    """
    prefix = _listener_prefix(listener)
    if not users:
        raise ValueError("sasl_plain_properties needs at least one user.")
    for name, password in users.items():
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
            raise ValueError(
                f"SASL user name {name!r} must be letters, digits and _ . @ - only (it becomes "
                "a JAAS option name)."
            )
        if any(c in password for c in '"\\\n;'):
            raise ValueError(
                f"the password of SASL user {name!r} holds a quote, backslash, semicolon or line "
                "break, which the JAAS config cannot carry as written here."
            )
    entries = " ".join(f'user_{name}="{password}"' for name, password in users.items())
    return {
        f"{prefix}sasl.enabled.mechanisms": "PLAIN",
        f"{prefix}plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {entries};"
        ),
    }


def ssl_pem_properties(
    listener: str, certificate_chain: str, private_key: str, *, key_password: str | None = None
) -> dict[str, str]:
    """``server.properties`` lines that give ``listener`` a PEM certificate and key (Kafka 2.7+).

    ``certificate_chain`` is the broker's certificate then its intermediates, PEM text;
    ``private_key`` its PKCS#8 key, PEM text (``-----BEGIN PRIVATE KEY-----``, or ``BEGIN
    ENCRYPTED PRIVATE KEY`` with ``key_password``). Clients verify the chain against the CA that
    signed it (kafka-python: ``ssl_cafile``), and the host name against its subject alternative
    names. The listener's protocol must be ``SSL`` or ``SASL_SSL``.
    """
    prefix = _listener_prefix(listener)
    if "-----BEGIN CERTIFICATE-----" not in certificate_chain:
        raise ValueError("certificate_chain must be PEM text holding -----BEGIN CERTIFICATE-----.")
    if not re.search(r"-----BEGIN (ENCRYPTED )?PRIVATE KEY-----", private_key):
        raise ValueError(
            "private_key must be a PKCS#8 key in PEM text (-----BEGIN PRIVATE KEY----- or "
            "-----BEGIN ENCRYPTED PRIVATE KEY-----); convert others with 'openssl pkcs8 -topk8'."
        )
    props = {
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.certificate.chain": certificate_chain.strip(),
        f"{prefix}ssl.keystore.key": private_key.strip(),
    }
    if key_password is not None:
        props[f"{prefix}ssl.key.password"] = key_password
    return props


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
"""
