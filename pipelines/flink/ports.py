"""Loopback ports of a local cluster and the process helpers that start and stop its JVMs."""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import asdict, dataclass

from costream.pipelines.flink.config import HOST

__all__ = ["Ports", "free_port", "stop_pid"]


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, timeout_s: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal ``pid``, wait up to ``timeout_s`` for it to exit, then SIGKILL it."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.1)


@dataclass
class Ports:
    """Loopback ports of one cluster (``0`` = pick a free one at ``up``)."""

    rest: int = 8081
    rpc: int = 6123
    job: int = 8099
    artifact: int = 8098
    expansion: int = 8097
    worker_pool: int = 50000

    def resolved(self) -> Ports:
        taken: set[int] = set()

        def pick(p: int) -> int:
            while p == 0 or p in taken:
                p = free_port()
            taken.add(p)
            return p

        return Ports(**{k: pick(v) for k, v in asdict(self).items()})
