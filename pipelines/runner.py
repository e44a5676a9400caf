"""Run a spec on a Beam runner: option handling shared by ``costream run`` and ``costream demo``."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .spec import build_pipeline, load_spec

__all__ = ["EMBEDDED_RUNNERS", "flink_args", "make_options", "run_spec"]

log = logging.getLogger(__name__)

# Runners that execute in this process. Beam's "DirectRunner" would first try to download the
# Prism binary (unavailable offline) and then fall back to the FnApiRunner; we pin the latter.
EMBEDDED_RUNNERS = ("DirectRunner", "FnApiRunner")


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
        # Beam's time-based bundle finishing did not always fire here (a stage held its first
        # elements until the job ended); finishing bundles at each checkpoint bounds that
        "finish_bundle_before_checkpointing": None,
        # (a bare flag turns Beam's default-true option off) Flink derives operator ids from the
        # chaining, which depends on the parallelism: without chaining a savepoint or checkpoint
        # maps onto the job at any --parallelism (rescaling)
        "operator_chaining": None,
    }
    return runner, _with_defaults(args, defaults)


def make_options(runner: str, extra: Sequence[str]) -> Any:
    """PipelineOptions for ``runner`` plus the user's Beam options (streaming on)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(extra)
    if runner in EMBEDDED_RUNNERS:
        # Beam YAML's own entry point pickles with cloudpickle; Beam 2.62's default (dill) cannot
        # pickle some of Beam YAML's transforms (LogForTesting: "maximum recursion depth").
        # In process only: Flink workers unpickle with the harness's default.
        args = _with_defaults(args, {"pickle_library": "cloudpickle"})
    else:
        args = [f"--runner={runner}", *args]
        # portable SDK workers keep Beam's state cache off unless asked (docs: ~86x slower reads)
        args = _with_defaults(args, {"max_cache_memory_usage_mb": "256"})
    opts = PipelineOptions(args)
    opts.view_as(StandardOptions).streaming = True
    return opts


def run_spec(
    spec_path: str | Path,
    runner: str = "DirectRunner",
    extra: Sequence[str] = (),
    until_idle_s: float | None = None,
    status_every_s: float | None = None,
) -> Any:
    """Validate and run a spec until its sources stop; returns the PipelineResult.

    With ``status_every_s`` (``costream run``), a status line of costream's counters is logged
    every that many seconds (0: none) and a summary from the result's Beam metrics at the end
    (:mod:`costream.pipelines.status`; logger ``costream``, INFO). Live counts come from this
    process on the embedded runner and from Flink's REST API with a ``--flink_master``; other
    runners get the summary only.
    """
    import apache_beam as beam
    from costream.pipelines import status

    overrides: dict[str, dict[str, Any]] = {}
    on_flink = runner == "FlinkRunner"
    if until_idle_s is not None and not on_flink:
        overrides["ReadFramesFromKafka"] = {"stop_after_idle_s": until_idle_s}
    if on_flink:
        # Beam's stateful BatchElements keys its buffer by a key drawn per DoFn instance: after a
        # restore the old key's restored buffer is flushed later than newly read frames, which
        # reorders a stream (the continual state then sees "duplicates" and gaps). On Flink the
        # backbone batches within a bundle, which keeps each stream's order.
        overrides["ExtractFeatures"] = {"max_batch_duration_secs": None}
    defaults: dict[str, dict[str, Any]] = {}
    in_process = runner in EMBEDDED_RUNNERS or "--job_endpoint=embed" in extra
    if in_process or until_idle_s is not None:
        # The in-process FnApiRunner (also behind PortableRunner's "embed" endpoint) fires
        # processing-time timers right after their bundle and refuses to finish with one pending;
        # Beam's Flink operator never finishes while one is pending (it spins in flushData once
        # its input ended). So the embedded runner, and any run meant to end (--until-idle), use
        # the TTL check instead of the idle timer; a streaming job on Flink uses the real timer.
        defaults["ContinualInference"] = {"idle_timer": False}

    spec = load_spec(spec_path, overrides=overrides, defaults=defaults)
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
    build_pipeline(pipeline, spec)
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
    and dead letters stop changing for ``idle_s`` seconds (not counting restarts), the job stops
    with a savepoint, whose path is returned: resume from it with ``--savepoint_path``.
    """
    from costream.pipelines.flink import FlinkError, FlinkRest

    api = FlinkRest(master)
    job = api.job_named(job_name)
    log.info("Flink job %s (%s): stopping after %.0f s without progress", job_name, job, idle_s)
    last: dict[str, float] | None = None
    changed = time.monotonic()
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
        # before the first counter shows up, the SDK workers may still be starting: wait for
        # them at least a minute (a job that never sees a record still stops after that)
        patience = idle_s if counters else max(idle_s, 60.0)
        if counters is None or counters != last:
            last, changed = counters, time.monotonic()
        elif time.monotonic() - changed >= patience:
            return api.stop_with_savepoint(job)
        time.sleep(1.0)
