"""``costream flink up | down | status``: a local Flink session cluster on loopback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = (
    "Start, stop or inspect a local Flink session cluster (JobManager, TaskManager, Beam's job "
    "server, a Python SDK worker pool) on loopback."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from costream.pipelines.flink import default_work_dir

    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--work-dir",
        type=Path,
        default=default_work_dir(),
        help="configuration, logs, checkpoints and savepoints (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--slots", type=int, default=4, help="up: TaskManager slots (default 4)")
    p.add_argument(
        "--state-backend",
        choices=("rocksdb", "hashmap"),
        default="rocksdb",
        help="up: Flink keyed-state backend (default rocksdb, incremental checkpoints)",
    )
    p.add_argument(
        "--state-cache-mb",
        type=int,
        default=256,
        help="up: the SDK harnesses' state cache (default 256 MB)",
    )
    p.add_argument(
        "--free-ports",
        action="store_true",
        help="up: pick free ports instead of 8081 (REST), 6123 (RPC), 8099 (jobs), 50000 (workers)",
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from costream.pipelines.flink import FlinkCluster, FlinkError, Ports

    cluster: FlinkCluster | None  # "up" starts one; the other actions attach to one, if any
    try:
        if args.action == "up":
            ports = Ports(0, 0, 0, 0, 0, 0) if args.free_ports else Ports()
            cluster = FlinkCluster(
                args.work_dir,
                ports=ports,
                slots=args.slots,
                state_backend=args.state_backend,
                state_cache_mb=args.state_cache_mb,
            ).up()
            print(f"flink_master={cluster.flink_master}")
            print(f"job_endpoint={cluster.job_endpoint}")
            print(f"worker_pool={cluster.worker_pool_endpoint}")
            print(f"web UI: http://{cluster.flink_master}/  (work dir {cluster.work_dir})")
            print(f"Beam options for this cluster: {' '.join(cluster.pipeline_args())}")
            return 0
        cluster = FlinkCluster.attach(args.work_dir, missing_ok=True)
        if args.action == "down":
            if cluster is None:
                print(f"no cluster recorded in {args.work_dir}")
                return 0
            cluster.down()
            print("stopped")
            return 0
        status: dict[str, Any]  # FlinkCluster.status()'s shape
        if cluster is None:
            status = {"work_dir": str(args.work_dir), "processes": []}
        else:
            status = cluster.status()
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            for proc in status["processes"]:
                state = "running" if proc["alive"] else "gone"
                print(f"{proc['role']:<12} pid {proc['pid']:<8} {state}")
            if cluster is not None:
                print(f"flink_master={cluster.flink_master}")
                print(f"job_endpoint={cluster.job_endpoint}")
                print(f"Beam options for this cluster: {' '.join(cluster.pipeline_args())}")
            else:
                print(f"no cluster recorded in {args.work_dir}")
        alive = [p for p in status["processes"] if p["alive"]]
        return 0 if alive and len(alive) == len(status["processes"]) else 1
    except FlinkError as err:
        print(f"costream flink {args.action}: {err}", file=sys.stderr)
        return 1
