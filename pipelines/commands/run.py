"""``costream run SPEC``: run a pipeline spec (embedded runner by default)."""

from __future__ import annotations

import argparse
from typing import Any

from costream.transforms.beam_fixes import RUNNERS

HELP = "Run a pipeline spec (Beam YAML) on the embedded runner, Flink or a portable job endpoint."
ACCEPTS_PIPELINE_OPTIONS = True  # unknown arguments are Beam pipeline options
LOG_LEVEL = "INFO"  # the status line, Beam's pipeline events, LogForTesting (pipelines/logs.py)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="pipeline spec (YAML), e.g. pipelines/specs/features.yaml")
    p.add_argument(
        "--runner",
        default="embedded",
        choices=RUNNERS,
        help="embedded (default): Beam's FnApiRunner in this process (DirectRunner and "
        "FnApiRunner are other names for it); FlinkRunner: a Flink cluster (--flink_master); "
        "PortableRunner: a job endpoint (--job_endpoint)",
    )
    p.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="stop once the Kafka sources saw no record for this long (replays, tests)",
    )
    p.add_argument(
        "--status-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="log a status line of costream's counters this often (default 10; 0: none); a "
        "summary always comes at the end",
    )
    p.epilog = "Other arguments go to Beam's PipelineOptions, e.g. --flink_master=host:8081 --parallelism=2."


def run(args: Any, extra: list[str]) -> int:
    from costream.pipelines.runner import describe_runner, run_spec

    if args.status_every < 0:
        raise SystemExit(
            f"--status-every must be 0 (no status lines) or more, got {args.status_every}."
        )
    print(f"runner: {describe_runner(args.runner, extra)}", flush=True)
    result = run_spec(args.spec, args.runner, extra, args.until_idle, args.status_every)
    print(f"pipeline finished: {result.state}")
    return 0
