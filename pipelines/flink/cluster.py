"""The local session cluster: its configuration, its processes and ``cluster.json``.

A JobManager and a TaskManager as separate JVMs, Beam's Flink job server and a Python SDK worker
pool, each started in its own session and stopped by its pid; ``cluster.json`` in the work
folder records roles, pids and ports so ``costream flink status`` / ``down`` can find them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from costream.pipelines.flink.config import (
    HOST,
    FlinkError,
    _default_java_opts,
    flink_home,
    job_server_jar,
)
from costream.pipelines.flink.ports import Ports, _alive, _listening, stop_pid
from costream.pipelines.flink.rest import FlinkRest

__all__ = ["FlinkCluster"]


@dataclass
class FlinkCluster:
    """One local session cluster, its configuration and its processes.

    Args:
        work_dir: holds ``conf/``, ``log/``, ``checkpoints/``, ``savepoints/``, the job
            server's artifacts and ``cluster.json``; checkpoints outlive ``down``.
        ports: loopback ports; ``Ports(0, 0, 0, 0, 0, 0)`` picks free ones (tests).
        slots: task slots of the TaskManager (parallelism 2 needs 2; more leave headroom).
        state_backend: ``rocksdb`` (Flink's default for large keyed state; incremental
            checkpoints) or ``hashmap``.
        state_cache_mb: the SDK harnesses' state cache (Beam's is off unless set).
        python: interpreter of the worker pool (must have costream installed).
        cwd: working directory of the worker pool (relative paths in specs resolve there).
    """

    work_dir: Path
    ports: Ports = field(default_factory=Ports)
    slots: int = 4
    state_backend: str = "rocksdb"
    state_cache_mb: int = 256
    taskmanager_memory: str = "2048m"
    python: str = sys.executable
    cwd: Path = field(default_factory=Path.cwd)
    pids: dict[str, int] = field(default_factory=dict)

    # --- configuration ---------------------------------------------------------------------

    @property
    def conf_dir(self) -> Path:
        return self.work_dir / "conf"

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        return self.work_dir / "savepoints"

    @property
    def flink_master(self) -> str:
        return f"{HOST}:{self.ports.rest}"

    @property
    def job_endpoint(self) -> str:
        return f"{HOST}:{self.ports.job}"

    @property
    def worker_pool_endpoint(self) -> str:
        return f"{HOST}:{self.ports.worker_pool}"

    def flink_config(self) -> dict[str, Any]:
        """Flink's ``config.yaml`` for this cluster (flat keys)."""
        java_opts = _default_java_opts()
        return {
            # loopback only: RPC, REST, blob server, data exchange
            "jobmanager.rpc.address": HOST,
            "jobmanager.rpc.port": self.ports.rpc,
            "jobmanager.bind-host": HOST,
            "taskmanager.host": HOST,
            "taskmanager.bind-host": HOST,
            "rest.address": HOST,
            "rest.bind-address": HOST,
            "rest.port": self.ports.rest,
            "jobmanager.memory.process.size": "1024m",
            "taskmanager.memory.process.size": self.taskmanager_memory,
            "taskmanager.numberOfTaskSlots": self.slots,
            "parallelism.default": 2,
            # keyed state and checkpoints
            "state.backend.type": self.state_backend,
            "state.backend.incremental": self.state_backend == "rocksdb",
            "state.checkpoints.dir": self.checkpoint_dir.resolve().as_uri(),
            "state.savepoints.dir": self.savepoint_dir.resolve().as_uri(),
            "state.checkpoints.num-retained": 3,
            "execution.checkpointing.externalized-checkpoint-retention": ("RETAIN_ON_CANCELLATION"),
            # a lost TaskManager is noticed in seconds, not the default 50 s
            "heartbeat.interval": 2000,
            "heartbeat.timeout": 10000,
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": 100,
            "restart-strategy.fixed-delay.delay": "2 s",
            "web.submit.enable": False,
            # REST metrics (costream's counters, read by --until-idle) at most 1 s old
            "metrics.fetcher.update-interval": 1000,
            # ... and again soon after a TaskManager dies: the fetcher starts no new fetch while
            # one waits on the lost TaskManager's metrics, for up to web.timeout (default 10 min,
            # no counters on REST meanwhile: measured after a kill -9 of the TaskManager)
            "web.timeout": 20000,
            "env.java.opts.all": java_opts,
        }

    def _write_conf(self) -> None:
        import yaml

        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for d in ("log", "checkpoints", "savepoints", "artifacts"):
            (self.work_dir / d).mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.flink_config(), sort_keys=False, width=10_000)
        (self.conf_dir / "config.yaml").write_text(text)
        src = flink_home() / "conf"
        for name in ("log4j-console.properties", "log4j.properties", "logback-console.xml"):
            if (src / name).exists():
                (self.conf_dir / name).write_text((src / name).read_text())

    # --- processes -------------------------------------------------------------------------

    def _spawn(self, role: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
        log_dir = self.work_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{role}.out", "ab")  # handed to the child
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(self.cwd),
            start_new_session=True,
        )
        out.close()
        self.pids[role] = proc.pid
        self._save()
        return proc.pid

    def _flink_env(self) -> dict[str, str]:
        return {
            "FLINK_HOME": str(flink_home()),
            "FLINK_CONF_DIR": str(self.conf_dir.resolve()),
            "FLINK_LOG_DIR": str((self.work_dir / "log").resolve()),
        }

    def start_jobmanager(self) -> int:
        script = flink_home() / "bin" / "jobmanager.sh"
        return self._spawn(
            "jobmanager", ["bash", str(script), "start-foreground"], self._flink_env()
        )

    def start_taskmanager(self, timeout_s: float = 90.0) -> int:
        """Start a TaskManager JVM and wait until its slots are registered."""
        before = {tm["id"] for tm in self._taskmanagers()}
        script = flink_home() / "bin" / "taskmanager.sh"
        pid = self._spawn(
            "taskmanager", ["bash", str(script), "start-foreground"], self._flink_env()
        )
        self._wait(
            lambda: any(tm["id"] not in before for tm in self._taskmanagers()),
            timeout_s,
            "the TaskManager to register with the JobManager",
            "taskmanager",
        )
        return pid

    def kill_taskmanager(self) -> None:
        """``kill -9`` the TaskManager (failover tests)."""
        pid = self.pids.pop("taskmanager")
        stop_pid(pid, timeout_s=10, sig=signal.SIGKILL)
        self._save()

    def start_job_server(self) -> int:
        cmd = [
            "java",
            "-Xmx768m",
            "-jar",
            str(job_server_jar()),
            f"--flink-master={self.flink_master}",
            f"--flink-conf-dir={self.conf_dir.resolve()}",
            f"--job-host={HOST}",
            f"--job-port={self.ports.job}",
            f"--artifact-port={self.ports.artifact}",
            f"--expansion-port={self.ports.expansion}",
            f"--artifacts-dir={(self.work_dir / 'artifacts').resolve()}",
        ]
        return self._spawn("job_server", cmd)

    def start_worker_pool(self) -> int:
        cmd = [
            self.python,
            "-m",
            "costream.pipelines.worker_pool",
            f"--host={HOST}",
            f"--port={self.ports.worker_pool}",
            f"--state-cache-mb={self.state_cache_mb}",
        ]
        return self._spawn("worker_pool", cmd)

    def up(self, timeout_s: float = 180.0) -> FlinkCluster:
        """Start every process and return once each answers (or raise, stopping what started)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        existing = self.attach(self.work_dir, missing_ok=True)
        if existing is not None and existing.running_roles():
            raise FlinkError(
                f"a cluster from {self.work_dir} is already running "
                f"({', '.join(existing.running_roles())}); stop it with 'costream flink down'."
            )
        self.ports = self.ports.resolved()
        self.pids = {}
        self._write_conf()
        try:
            self.start_jobmanager()
            self._wait(self._rest_up, timeout_s, "the JobManager's REST API", "jobmanager")
            self.start_taskmanager(timeout_s)
            self.start_job_server()
            self.start_worker_pool()
            self._wait(
                lambda: _listening(self.ports.job), timeout_s, "the job server", "job_server"
            )
            self._wait(
                lambda: _listening(self.ports.worker_pool),
                timeout_s,
                "the SDK worker pool",
                "worker_pool",
            )
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop every process by pid (the worker pool first, the JobManager last)."""
        for role in ("worker_pool", "job_server", "taskmanager", "jobmanager"):
            pid = self.pids.pop(role, None)
            if pid is not None:
                stop_pid(pid)
        state = self.work_dir / "cluster.json"
        if state.exists():
            state.unlink()

    def running_roles(self) -> list[str]:
        return [role for role, pid in self.pids.items() if _alive(pid)]

    def status(self) -> dict[str, Any]:
        """Each process with its role, pid and whether it is alive, the endpoints, Beam's options."""
        return {
            "work_dir": str(self.work_dir),
            "flink_master": self.flink_master,
            "job_endpoint": self.job_endpoint,
            "worker_pool": self.worker_pool_endpoint,
            "pipeline_args": self.pipeline_args(),
            "processes": [
                {"role": role, "pid": pid, "alive": _alive(pid)} for role, pid in self.pids.items()
            ],
        }

    def _wait(self, ready: Any, timeout_s: float, what: str, role: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.pids.get(role)
            if pid is not None and not _alive(pid):
                raise FlinkError(f"{role} exited while waiting for {what}:\n{self.log_tail(role)}")
            try:
                if ready():
                    return
            except (OSError, FlinkError):
                pass
            time.sleep(0.3)
        raise FlinkError(
            f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.log_tail(role)}"
        )

    def log_tail(self, role: str, lines: int = 30) -> str:
        path = self.work_dir / "log" / f"{role}.out"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- persistence -----------------------------------------------------------------------

    def _save(self) -> None:
        data = {
            "ports": asdict(self.ports),
            "pids": self.pids,
            "slots": self.slots,
            "state_backend": self.state_backend,
            "python": self.python,
            "cwd": str(self.cwd),
        }
        (self.work_dir / "cluster.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def attach(cls, work_dir: Path, missing_ok: bool = False) -> FlinkCluster | None:
        """The cluster recorded in ``work_dir/cluster.json`` (``None`` when there is none)."""
        path = Path(work_dir) / "cluster.json"
        if not path.exists():
            if missing_ok:
                return None
            raise FlinkError(f"no cluster recorded in {work_dir} (start one: costream flink up).")
        data = json.loads(path.read_text())
        return cls(
            Path(work_dir),
            ports=Ports(**data["ports"]),
            slots=data["slots"],
            state_backend=data["state_backend"],
            python=data["python"],
            cwd=Path(data["cwd"]),
            pids={k: int(v) for k, v in data["pids"].items()},
        )

    # --- REST ------------------------------------------------------------------------------

    @property
    def api(self) -> FlinkRest:
        return FlinkRest(self.flink_master)

    def rest(self, path: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        return self.api.rest(path, body, method)

    def _rest_up(self) -> bool:
        return "taskmanagers" in self.rest("/overview")

    def _taskmanagers(self) -> list[dict[str, Any]]:
        try:
            return list(self.rest("/taskmanagers")["taskmanagers"])
        except FlinkError:
            return []

    def jobs(self) -> list[dict[str, Any]]:
        return self.api.jobs()

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        return self.api.checkpoints(job_id)

    def wait_for_checkpoints(
        self, job_id: str, count: int, timeout_s: float = 120.0
    ) -> dict[str, Any]:
        return self.api.wait_for_checkpoints(job_id, count, timeout_s)

    def stop_with_savepoint(self, job_id: str, timeout_s: float = 120.0) -> str:
        return self.api.stop_with_savepoint(job_id, str(self.savepoint_dir.resolve()), timeout_s)

    def user_metrics(self, job_id: str) -> dict[str, float]:
        return self.api.user_metrics(job_id)

    # --- running pipelines -----------------------------------------------------------------

    def pipeline_args(self, checkpoint_interval_ms: int = 5000, parallelism: int = 2) -> list[str]:
        """Beam options that run a pipeline on this cluster through its job server.

        They include the option fixes ``costream run`` adds for a Flink job
        (:func:`costream.transforms.beam_fixes.pipeline_args`), so a pipeline submitted by any
        entry point (``python -m apache_beam.yaml.main``) runs the way ``costream run`` runs it.
        Without ``--finish_bundle_before_checkpointing`` a checkpoint that finds a bundle open
        finishes it inside Beam's ``DoFnOperator.snapshotState``, whose outputs go to a buffer
        that only the stage's next element or watermark flushes: a stage whose input has ended
        (``ResolvePartitions`` after the Impulse) then keeps the partitions it found, the
        watermark passes on to the end of time, and the job reads nothing.
        """
        from costream.transforms import beam_fixes

        args = [
            "--runner=PortableRunner",
            f"--job_endpoint={self.job_endpoint}",
            "--environment_type=EXTERNAL",
            f"--environment_config={self.worker_pool_endpoint}",
            f"--checkpointing_interval={checkpoint_interval_ms}",
            f"--parallelism={parallelism}",
        ]
        return beam_fixes.pipeline_args("FlinkRunner", args)  # a Flink job, whatever the runner
