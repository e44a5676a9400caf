"""What both local brokers share: one process on loopback, its port, start, wait, stop by pid.

:class:`_BrokerProcess` starts a broker (what to launch is the subclass's), waits until it answers
a Kafka metadata request, creates and deletes topics through one shared admin client, and stops
it by pid. A just-freed port (TIME_WAIT after a broker stopped) is reused: the free-port check
binds with ``SO_REUSEADDR``, as both brokers' listeners do, so only a port someone is listening
on is refused.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from types import TracebackType

__all__ = ["BrokerError"]


class BrokerError(RuntimeError):
    """A local broker could not be found, started, or asked to do something."""


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
