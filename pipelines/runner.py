"""Run a spec on a Beam runner: option handling shared by ``costream run`` and ``costream demo``.

Runner names: ``embedded`` (the default) runs the spec in this process on Beam's FnApiRunner;
``FnApiRunner`` and ``DirectRunner`` are other names for it (Beam's own DirectRunner is not
used). ``FlinkRunner`` submits to Flink, ``PortableRunner`` to a job endpoint. The options and
settings each runner needs as workarounds come from :mod:`costream.transforms.beam_fixes`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from costream.transforms import beam_fixes
from costream.transforms.beam_fixes import EMBEDDED_RUNNERS, RUNNERS

from .spec import build_pipeline, load_spec

__all__ = [
    "EMBEDDED_RUNNERS",
    "RUNNERS",
    "describe_runner",
    "flink_args",
    "make_options",
    "run_spec",
]

log = logging.getLogger(__name__)


def describe_runner(runner: str, extra: Sequence[str] = ()) -> str:
    """What actually runs a spec for the runner name ``runner``, in words (logged by run_spec)."""
    if runner in EMBEDDED_RUNNERS:
        return "embedded: Beam's FnApiRunner, in this process"
    endpoint = _option(extra, "job_endpoint")
    if runner == "PortableRunner" and endpoint == "embed":
        return "PortableRunner on an embedded job server (in this process)"
    if runner == "PortableRunner":
        return f"PortableRunner, job endpoint {endpoint}"
    if runner == "FlinkRunner":
        master = _option(extra, "flink_master")
        return f"FlinkRunner, Flink master {master or '[auto]'}"
    return runner


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name=V`` / ``--name V`` in ``args`` (``""`` for a bare flag)."""
    for i, a in enumerate(args):
        if a == f"--{name}":
            nxt = args[i + 1] if i + 1 < len(args) else ""
            return "" if nxt.startswith("--") else nxt
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _with_defaults(args: list[str], defaults: dict[str, str | None]) -> list[str]:
    out = list(args)
    for name, value in defaults.items():
        if _option(out, name) is None:
            out.append(f"--{name}" if value is None else f"--{name}={value}")
    return out


def flink_args(extra: Sequence[str], until_idle_s: float | None = None) -> tuple[str, list[str]]:
    """``(runner, args)`` for ``--runner FlinkRunner``: the tested versions, checkpoints on.

    When ``--flink_master`` names the cluster that ``costream flink up`` started, the pipeline
    goes to that cluster's job server and SDK worker pool (PortableRunner); otherwise Beam's
    FlinkRunner starts the fetched job server itself (``[local]``: an in-process MiniCluster with
    LOOPBACK workers).
    """
    from costream.pipelines import flink

    args = list(extra)
    master = _option(args, "flink_master")
    cluster = flink.FlinkCluster.attach(flink.default_work_dir(), missing_ok=True)
    runner = "FlinkRunner"
    if (
        cluster is not None
        and master in (cluster.flink_master, f"localhost:{cluster.ports.rest}")
        and {"job_server", "worker_pool"} <= set(cluster.running_roles())
    ):
        runner = "PortableRunner"
        args = [a for a in args if not a.startswith("--flink_master")]
        args = _with_defaults(
            args,
            {
                "job_endpoint": cluster.job_endpoint,
                "environment_type": "EXTERNAL",
                "environment_config": cluster.worker_pool_endpoint,
            },
        )
    else:
        args = _with_defaults(
            args,
            {
                "flink_job_server_jar": str(flink.job_server_jar()),
                "flink_version": flink.FLINK_MINOR,
            },
        )
    defaults: dict[str, str | None] = {
        "checkpointing_interval": "5000",
        "parallelism": "2",
        # Beam would otherwise override the cluster's retention and delete them on cancel
        "retain_externalized_checkpoints_on_cancellation": None,
        # (a bare flag turns Beam's default-true option off) Flink derives operator ids from the
        # chaining, which depends on the parallelism: without chaining a savepoint or checkpoint
        # maps onto the job at any --parallelism (rescaling)
        "operator_chaining": None,
    }
    # a Flink job either way: Flink's option fixes whatever the runner class
    return runner, beam_fixes.pipeline_args("FlinkRunner", _with_defaults(args, defaults))


def make_options(runner: str, extra: Sequence[str]) -> Any:
    """PipelineOptions for ``runner`` plus the user's Beam options (streaming on).

    The options ``runner`` needs as workarounds are added unless the user set them
    (:func:`costream.transforms.beam_fixes.pipeline_args`).
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = beam_fixes.pipeline_args(runner, extra)
    if runner not in EMBEDDED_RUNNERS:
        args = [f"--runner={runner}", *args]
    opts = PipelineOptions(args)
    opts.view_as(StandardOptions).streaming = True
    return opts


def run_spec(
    spec_path: str | Path,
    runner: str = "embedded",
    extra: Sequence[str] = (),
    until_idle_s: float | None = None,
    status_every_s: float | None = None,
) -> Any:
    """Validate and run a spec until its sources stop; returns the PipelineResult.

    With ``status_every_s`` (``costream run``), a status line of costream's counters is logged
    every that many seconds (0: none) and a summary from the result's Beam metrics at the end
    (:mod:`costream.pipelines.status`; logger ``costream``, INFO). Live counts come from this
    process on the embedded runner and from Flink's REST API with a ``--flink_master``; other
    runners get the summary only. Which runner actually runs is logged
    (:func:`describe_runner`). Settings that depend on the runner (the idle timer, batching
    across bundles) are chosen when the spec expands (:mod:`costream.transforms.beam_fixes`).

    Raises:
        ValueError: ``runner`` is not one of :data:`RUNNERS`.
    """
    import apache_beam as beam

    from costream.pipelines import status

    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; the runners are {', '.join(RUNNERS)}.")
    overrides: dict[str, dict[str, Any]] = {}
    on_flink = runner == "FlinkRunner"
    if until_idle_s is not None and not on_flink:
        overrides["ReadFramesFromKafka"] = {"stop_after_idle_s": until_idle_s}
    in_process = runner in EMBEDDED_RUNNERS or _option(extra, "job_endpoint") == "embed"

    spec = load_spec(spec_path, overrides=overrides)
    log.info("runner: %s", describe_runner(runner, extra))
    master = _option(extra, "flink_master")
    job_name = _option(extra, "job_name")
    rest_master = master if on_flink and master and not master.startswith("[") else None
    if on_flink:
        runner, extra = flink_args(extra, until_idle_s)
        # --until-idle and the status line find the job by its name on the REST API
        wants_name = until_idle_s is not None or (rest_master and status_every_s)
        if wants_name and job_name is None:
            job_name = f"costream-{Path(spec_path).stem}-{uuid.uuid4().hex[:8]}"
            extra = [*extra, f"--job_name={job_name}"]
    options = make_options(runner, extra)
    if runner in EMBEDDED_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    else:
        pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, spec, run_ends=until_idle_s is not None)
    source: status.CountSource | None = None
    if status_every_s is not None:
        if in_process:
            source = status.LocalCounts()
        elif rest_master and job_name:
            source = status.FlinkCounts(rest_master, job_name)
        elif status_every_s > 0:
            log.info("status: no live counters on this runner; a summary comes at the end")
    with status.StatusReporter(source, status_every_s or 0) as reporter:
        result = pipeline.run()
        if on_flink and until_idle_s is not None and rest_master:
            savepoint = stop_when_idle(rest_master, job_name or "", until_idle_s, result)
            print(f"savepoint={savepoint}", flush=True)
        result.wait_until_finish()
    if status_every_s is not None:
        reporter.summary(result)
    return result


def stop_when_idle(master: str, job_name: str, idle_s: float, result: Any) -> str:
    """Stop the Flink job ``job_name`` with a savepoint once its counters sat still ``idle_s``.

    On Flink a job never ends by itself (Beam keeps the streaming Impulse source up while
    checkpointing is on, and letting it end stalls checkpoints), so ``--until-idle`` watches
    costream's counters through Flink's REST API instead: once records read, frames, detections
    and dead letters stop changing for ``idle_s`` seconds (not counting restarts, nor time when
    the counters, once seen, are missing from REST), the job stops with a savepoint, whose path
    is returned: resume from it with ``--savepoint_path``.
    """
    from costream.pipelines.flink import FlinkError, FlinkRest

    api = FlinkRest(master)
    job = api.job_named(job_name)
    log.info("Flink job %s (%s): stopping after %.0f s without progress", job_name, job, idle_s)
    last: dict[str, float] | None = None
    changed = time.monotonic()
    seen = False  # whether costream's counters have shown up on REST
    while True:
        try:
            info = api.rest(f"/jobs/{job}")
        except FlinkError as err:  # a busy JobManager: ask again, and do not count it as idle
            log.warning("Flink REST: %s; retrying", err)
            changed = time.monotonic()
            time.sleep(1.0)
            continue
        state = info["state"]
        if state in ("FINISHED", "CANCELED", "FAILED"):
            raise FlinkError(f"Flink job {job} ended by itself ({state}) before going idle.")
        running = state == "RUNNING" and all(v["status"] == "RUNNING" for v in info["vertices"])
        try:
            now = api.user_metrics(job) if running else None
        except FlinkError:
            now = None
        counters = None if now is None else {k: v for k, v in now.items() if not k.endswith("_us")}
        if seen and not counters:
            # counters that vanish are unknown, not still: Flink's REST metrics fetcher shows
            # none for up to web.timeout after a TaskManager is lost
            counters = None
        seen = seen or bool(counters)
        # before the first counter shows up, the SDK workers may still be starting: wait for
        # them at least a minute (a job that never sees a record still stops after that)
        patience = idle_s if counters else max(idle_s, 60.0)
        if counters is None or counters != last:
            last, changed = counters, time.monotonic()
        elif time.monotonic() - changed >= patience:
            return api.stop_with_savepoint(job)
        time.sleep(1.0)
