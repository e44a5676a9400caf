"""Run a spec on a Beam runner: option handling shared by ``costream run`` and ``costream demo``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .spec import build_pipeline, load_spec

__all__ = ["EMBEDDED_RUNNERS", "make_options", "run_spec"]

log = logging.getLogger(__name__)

# Runners that execute in this process. Beam's "DirectRunner" would first try to download the
# Prism binary (unavailable offline) and then fall back to the FnApiRunner; we pin the latter.
EMBEDDED_RUNNERS = ("DirectRunner", "FnApiRunner")


def make_options(runner: str, extra: Sequence[str]) -> Any:
    """PipelineOptions for ``runner`` plus the user's Beam options (streaming on)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(extra)
    if runner not in EMBEDDED_RUNNERS:
        args = [f"--runner={runner}", *args]
        if not any(a.startswith("--max_cache_memory_usage_mb") for a in args):
            # portable SDK workers keep Beam's state cache off unless asked (docs: ~86x slower reads)
            args.append("--max_cache_memory_usage_mb=256")
    opts = PipelineOptions(args)
    opts.view_as(StandardOptions).streaming = True
    return opts


def run_spec(
    spec_path: str | Path,
    runner: str = "DirectRunner",
    extra: Sequence[str] = (),
    until_idle_s: float | None = None,
) -> Any:
    """Validate and run a spec until its sources stop; returns the PipelineResult."""
    import apache_beam as beam

    overrides: dict[str, dict[str, Any]] = {}
    if until_idle_s is not None:
        overrides["ReadFromKafka"] = {"stop_after_idle_s": until_idle_s}
    defaults: dict[str, dict[str, Any]] = {}
    in_process = runner in EMBEDDED_RUNNERS or "--job_endpoint=embed" in extra
    if in_process:
        # the in-process FnApiRunner (also behind PortableRunner's "embed" endpoint) fires
        # processing-time timers right after their bundle and refuses to finish with one pending:
        # use the TTL check instead of the idle timer
        defaults["ContinualInference"] = {"idle_timer": False}
    spec = load_spec(spec_path, overrides=overrides, defaults=defaults)
    options = make_options(runner, extra)
    if runner in EMBEDDED_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
    else:
        pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, spec)
    result = pipeline.run()
    result.wait_until_finish()
    return result
