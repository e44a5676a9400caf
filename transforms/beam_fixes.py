"""costream's workarounds for Beam 2.62's runners, all in this file.

Each fix is one named function whose docstring says what Beam does, why costream cannot live
with it and what the fix does; each is idempotent and has a test in
``tests/transforms/test_beam_fixes.py`` that fails without it. They act in one of three places,
and each place has one entry point that applies every fix of its kind:

* **the SDK worker** (:data:`WORKER_FIXES`, applied by :func:`apply`): patches of Beam's worker
  code in this process. :func:`apply` runs where ``ContinualInference`` is built for an
  in-process runner (before the runner builds its bundle processors), where costream's worker
  pool starts an SDK harness (``pipelines/worker_pool.py``) and where a worker sets up
  costream's stateful DoFn (``ContinualInferenceFn.setup``); if Beam's internals no longer
  look as expected a fix logs a warning and leaves Beam alone.
* **pipeline options** (:data:`OPTION_FIXES`, applied by :func:`pipeline_args`): options a
  runner needs, added to the command line unless the user set them.
* **transform settings** (:data:`SETTING_FIXES`, applied by :func:`transform_kwargs`): keyword
  arguments of costream's PTransforms that depend on where the pipeline runs, chosen when the
  YAML types expand (``costream run``, ``costream score`` and ``apache_beam.yaml.main`` alike).

Example:
    >>> pipeline_args("FnApiRunner", ["--pickle_library=dill"])  # the user's choice wins
    ['--pickle_library=dill']
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "EMBEDDED_RUNNERS",
    "OPTION_FIXES",
    "RUNNERS",
    "SAMPLING_PERIOD_MS",
    "SETTING_FIXES",
    "WORKER_FIXES",
    "apply",
    "batch_within_bundles_off_process",
    "cloudpickle_in_process",
    "drop_cleared_state_from_cache",
    "finish_bundles_at_checkpoints_on_flink",
    "in_process",
    "pipeline_args",
    "portable_state_cache",
    "short_state_sampling_period",
    "transform_kwargs",
    "ttl_instead_of_timer",
    "weigh_flat_state_cheaply",
]

log = logging.getLogger(__name__)

RUNNERS = ("embedded", "DirectRunner", "FnApiRunner", "FlinkRunner", "PortableRunner")
"""The runner names ``costream run --runner`` takes."""

EMBEDDED_RUNNERS = RUNNERS[:3]
"""Runner names that run in this process on Beam's FnApiRunner (``costream run --runner``).
``DirectRunner`` is accepted for the FnApiRunner: Beam's own DirectRunner would first try to
download the Prism binary (unavailable offline) and then fall back to the FnApiRunner."""


def in_process(pipeline: Any) -> bool:
    """Whether ``pipeline`` runs on an in-process runner, whose processing-time timers are not real.

    In process: the FnApiRunner, Beam's direct runners, a PortableRunner on
    ``--job_endpoint=embed``. Everything else (Flink) has real timers.
    """
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, DirectRunner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.runners.portability.portable_runner import PortableRunner

    runner = pipeline.runner
    if isinstance(runner, FnApiRunner | DirectRunner | BundleBasedDirectRunner):
        return True
    if type(runner) is PortableRunner:
        return pipeline.options.view_as(PortableOptions).job_endpoint == "embed"
    return False


# -- the SDK worker --------------------------------------------------------------------------

_BEAM_CLEAR: Any = None  # Beam's own GlobalCachingStateHandler.clear, kept for tests


def _clear(self: Any, state_key: Any) -> Any:
    """``GlobalCachingStateHandler.clear`` without leaving an empty entry per cleared key."""
    cache_token = self._get_cache_token(state_key)
    if cache_token:
        self._state_cache.invalidate((self._convert_to_cache_key(state_key), cache_token))
    return self._underlying.clear(state_key)


def drop_cleared_state_from_cache() -> bool:
    """A cleared state cell leaves nothing in the SDK worker's state cache.

    ``GlobalCachingStateHandler.clear`` records a cleared cell as an empty entry in the worker's
    state cache, so a cell cleared because its stream went idle leaves its key behind (about
    0.5 kB per stream id ever seen). With a churn of stream ids that is unbounded growth until
    the cache's byte limit (``--max_cache_memory_usage_mb``) starts evicting, on the embedded
    runner and on every Flink worker (``benchmarks/bench_stream_churn.py``: +38 MB over 75,000
    ids before the fix). The fix makes ``clear`` drop the cache entry instead; the next read asks
    the runner, which answers with the empty cell (the clear is sent first, when the bundle
    commits). Returns whether the fix is in place.
    """
    global _BEAM_CLEAR
    try:
        from apache_beam.runners.worker.sdk_worker import GlobalCachingStateHandler
        from apache_beam.runners.worker.statecache import StateCache
    except ImportError:  # pragma: no cover - another Beam layout
        log.warning(
            "Beam's GlobalCachingStateHandler not found: cleared stream state stays cached."
        )
        return False
    if GlobalCachingStateHandler.clear is _clear:
        return True
    needed = ("_get_cache_token", "_convert_to_cache_key", "clear")
    if not all(hasattr(GlobalCachingStateHandler, n) for n in needed) or not hasattr(
        StateCache, "invalidate"
    ):
        log.warning("Beam's state cache changed: cleared stream state stays cached.")
        return False
    _BEAM_CLEAR = GlobalCachingStateHandler.clear
    GlobalCachingStateHandler.clear = _clear
    return True


_BEAM_DEEP_SIZE: Any = None  # Beam's own statecache.get_deep_size, kept for tests
_FLAT = frozenset({bytes, str, int, float, bool, type(None)})


def _deep_size(*objs: Any) -> int:
    """Beam's state-cache weight, a flat list (of bytes, str, numbers) summed directly."""
    total = 0
    for obj in objs:
        if type(obj) is list and all(type(x) in _FLAT for x in obj):
            total += sys.getsizeof(obj) + sum([sys.getsizeof(x) for x in obj if x is not None])
        else:
            total += _BEAM_DEEP_SIZE(obj)
    return total


def weigh_flat_state_cheaply() -> bool:
    """The SDK worker's state cache weighs a flat state value without walking every module.

    Beam's ``StateCache`` weighs each value it loads or puts with ``objsize.get_deep_size``,
    which first collects the globals of every loaded module (about 2,200 with torch) to leave
    them out: 0.3-0.8 ms a call here. A stream's (or a shard's) state cell is a list of one
    ``bytes`` value, and each write invalidates it (:func:`drop_cleared_state_from_cache`), so
    every read after a write paid that: once per frame on the one-stream path, on the embedded
    runner and on every Flink worker. The fix weighs a list of bytes, strings and numbers as
    ``getsizeof`` of the list plus its items but ``None`` (what objsize finds for them, but for
    items that are also module globals) and leaves every other value to Beam's weighing.
    Returns whether the fix is in place.
    """
    global _BEAM_DEEP_SIZE
    try:
        from apache_beam.runners.worker import statecache
    except ImportError:  # pragma: no cover - another Beam layout
        log.warning("Beam's statecache not found: state values are weighed by Beam.")
        return False
    if statecache.get_deep_size is _deep_size:
        return True
    if not callable(getattr(statecache, "get_deep_size", None)):
        log.warning("Beam's state cache changed: state values are weighed by Beam.")
        return False
    _BEAM_DEEP_SIZE = statecache.get_deep_size
    statecache.get_deep_size = _deep_size
    return True


SAMPLING_PERIOD_MS = 10
"""The SDK worker's state-sampling period with :func:`short_state_sampling_period` (Beam: 200)."""


def short_state_sampling_period() -> bool:
    """A bundle's end waits at most 10 ms for the SDK worker's state-sampling thread, not 200.

    Each bundle processor's ``StateSampler`` (the per-step execution-time counters and the
    "operation ongoing" lull logs) samples from a thread that sleeps a period growing from 2 ms
    to ``sampling_period_ms`` (200 by default) and cannot be woken: its ``stop`` at the end of
    every bundle joins that thread, so each bundle end waited up to the period, on the embedded
    runner and on every Flink worker. py-spy of the features spec at 32 streams (embedded
    runner, a backlog) found the pipeline's thread in that join for 7 % of its time. The fix
    makes 10 ms the default period of samplers created after it (every 10 ms the thread takes a
    lock and adds a duration, without the GIL), so the counters and lull logs stay. Bundle
    processors built before the fix keep Beam's period: :func:`apply` runs where the pipeline is
    built for an in-process runner and where costream's worker pool starts a harness.
    Returns whether the fix is in place.
    """
    try:
        from apache_beam.runners.worker import statesampler
    except ImportError:  # pragma: no cover - another Beam layout
        log.warning("Beam's statesampler not found: bundle ends wait for its sampling thread.")
        return False
    init: Any = getattr(statesampler.StateSampler, "__init__", None)
    defaults = getattr(init, "__defaults__", None)
    if defaults == (SAMPLING_PERIOD_MS,):
        return True
    if defaults != (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
        log.warning("Beam's StateSampler changed: bundle ends wait for its sampling thread.")
        return False
    init.__defaults__ = (SAMPLING_PERIOD_MS,)
    return True


WORKER_FIXES: tuple[Callable[[], bool], ...] = (
    drop_cleared_state_from_cache,
    weigh_flat_state_cheaply,
    short_state_sampling_period,
)
"""The patches of Beam's SDK worker that :func:`apply` installs."""


def apply() -> bool:
    """Install every worker fix in this process (idempotent); returns whether all are in place."""
    return all([fix() for fix in WORKER_FIXES])


# -- pipeline options ------------------------------------------------------------------------


def _has_option(args: Sequence[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def _with_default(args: Sequence[str], name: str, value: str | None) -> list[str]:
    if _has_option(args, name):
        return list(args)
    return [*args, f"--{name}" if value is None else f"--{name}={value}"]


def cloudpickle_in_process(runner: str, args: Sequence[str]) -> list[str]:
    """The embedded runner pickles with cloudpickle, as Beam YAML's own entry point does.

    Beam 2.62's default pickler (dill) cannot pickle some of Beam YAML's transforms
    (``LogForTesting``: "maximum recursion depth exceeded"). In process only: Flink's SDK
    workers unpickle with the harness's default.
    """
    if runner not in EMBEDDED_RUNNERS:
        return list(args)
    return _with_default(args, "pickle_library", "cloudpickle")


def portable_state_cache(runner: str, args: Sequence[str]) -> list[str]:
    """Portable SDK workers get a 256 MB state cache.

    Beam's portable workers keep the state cache off unless asked, and then every read of a
    stream's state goes to the runner (about 86 times slower per read in Beam's docs).
    """
    if runner in EMBEDDED_RUNNERS:
        return list(args)
    return _with_default(args, "max_cache_memory_usage_mb", "256")


def finish_bundles_at_checkpoints_on_flink(runner: str, args: Sequence[str]) -> list[str]:
    """On Flink a bundle also finishes at each checkpoint.

    Beam's time-based bundle finishing on Flink did not always fire: a stage held its first
    elements until the job ended. Finishing bundles at each checkpoint bounds how long they wait.
    """
    if runner != "FlinkRunner":
        return list(args)
    return _with_default(args, "finish_bundle_before_checkpointing", None)


OPTION_FIXES: tuple[Callable[[str, Sequence[str]], list[str]], ...] = (
    cloudpickle_in_process,
    portable_state_cache,
    finish_bundles_at_checkpoints_on_flink,
)
"""The option fixes :func:`pipeline_args` applies."""


def pipeline_args(runner: str, args: Sequence[str]) -> list[str]:
    """``args`` with every option fix for ``runner`` added where the user did not set it."""
    out = list(args)
    for fix in OPTION_FIXES:
        out = fix(runner, out)
    return out


# -- transform settings ----------------------------------------------------------------------


def ttl_instead_of_timer(
    kwargs: dict[str, Any], pipeline: Any, *, run_ends: bool = False
) -> dict[str, Any]:
    """``ContinualInference``'s ``idle_timer``, where it is not set (None): the runner decides.

    The in-process FnApiRunner (also behind PortableRunner's ``embed`` endpoint) fires
    processing-time timers right after their bundle and refuses to finish with one pending;
    Beam's Flink operator never finishes while one is pending (it spins in ``flushData`` once
    its input ended). So the in-process runner, and any run meant to end (``run_ends``:
    ``costream run --until-idle``), check the idle timeout as a TTL; a streaming job on Flink
    uses the real timer. Without a pipeline (validation) the setting stays unset.
    """
    if kwargs.get("idle_timer") is not None or pipeline is None:
        return kwargs
    return {**kwargs, "idle_timer": not (run_ends or in_process(pipeline))}


def batch_within_bundles_off_process(
    kwargs: dict[str, Any], pipeline: Any, *, run_ends: bool = False
) -> dict[str, Any]:
    """``ExtractFeatures`` batches within a bundle on a distributed runner (Flink).

    Beam's stateful ``BatchElements`` keys its buffer by a key drawn per DoFn instance: after a
    restore the old key's restored buffer is flushed later than newly read frames, which
    reorders a stream (the continual state then sees duplicates and gaps). Batching within a
    bundle (``max_batch_duration_secs`` None) keeps each stream's order.
    """
    if kwargs.get("max_batch_duration_secs") is None or pipeline is None or in_process(pipeline):
        return kwargs
    log.info("ExtractFeatures: batching within bundles on %s", type(pipeline.runner).__name__)
    return {**kwargs, "max_batch_duration_secs": None}


SETTING_FIXES: Mapping[str, tuple[Callable[..., dict[str, Any]], ...]] = {
    "ContinualInference": (ttl_instead_of_timer,),
    "ExtractFeatures": (batch_within_bundles_off_process,),
}
"""The setting fixes :func:`transform_kwargs` applies, by costream YAML type."""


def transform_kwargs(
    type_name: str, kwargs: Mapping[str, Any], pipeline: Any, *, run_ends: bool = False
) -> dict[str, Any]:
    """The keyword arguments of ``type_name``'s PTransform with every setting fix for ``pipeline``.

    ``pipeline`` None (validation, before a runner exists) leaves them as they are.
    """
    out = dict(kwargs)
    for fix in SETTING_FIXES.get(type_name, ()):
        out = fix(out, pipeline, run_ends=run_ends)
    return out
