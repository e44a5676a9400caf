"""One fix to Beam's Python SDK worker that costream's per-stream state relies on (Beam 2.62).

**Cleared state stays in the worker's state cache.** ``GlobalCachingStateHandler.clear`` records a
cleared cell as an empty entry in the SDK worker's state cache, so a cell cleared because its
stream went idle leaves its key behind (about 0.5 kB per stream id ever seen). With a churn of
stream ids that is unbounded growth until the cache's byte limit
(``--max_cache_memory_usage_mb``) starts evicting, on the embedded runner and on every Flink
worker. Measured with ``benchmarks/bench_stream_churn.py``: +38 MB over 75,000 ids before the
fix. :func:`apply` makes ``clear`` drop the cache entry instead; the next read asks the runner,
which answers with the empty cell (the clear is sent first, when the bundle commits).

:func:`apply` is idempotent and runs where a worker sets up costream's stateful DoFn
(``ContinualInferenceFn.setup``); if Beam's internals no longer look as expected it logs a
warning and leaves Beam alone.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["apply"]

log = logging.getLogger(__name__)
_APPLIED = False
_BEAM_CLEAR: Any = None  # Beam's own clear, kept for tests and for undoing the fix


def _clear(self: Any, state_key: Any) -> Any:
    """``GlobalCachingStateHandler.clear`` without leaving an empty entry per cleared key."""
    cache_token = self._get_cache_token(state_key)
    if cache_token:
        self._state_cache.invalidate((self._convert_to_cache_key(state_key), cache_token))
    return self._underlying.clear(state_key)


def apply() -> bool:
    """Install the fix in this process; returns whether it is in place."""
    global _APPLIED, _BEAM_CLEAR
    if _APPLIED:
        return True
    try:
        from apache_beam.runners.worker.sdk_worker import GlobalCachingStateHandler
        from apache_beam.runners.worker.statecache import StateCache
    except ImportError:  # pragma: no cover - another Beam layout
        log.warning(
            "Beam's GlobalCachingStateHandler not found: cleared stream state stays cached."
        )
        return False
    needed = ("_get_cache_token", "_convert_to_cache_key", "clear")
    if not all(hasattr(GlobalCachingStateHandler, n) for n in needed) or not hasattr(
        StateCache, "invalidate"
    ):
        log.warning("Beam's state cache changed: cleared stream state stays cached.")
        return False
    _BEAM_CLEAR = GlobalCachingStateHandler.clear
    GlobalCachingStateHandler.clear = _clear
    _APPLIED = True
    return True
