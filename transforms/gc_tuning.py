"""Python's cyclic garbage collector, tuned for a worker that steps frames all day.

Every frame allocates a few dozen short-lived objects (the Kafka record, its headers, the decoded
frame, the detection), and the worker holds hundreds of thousands of long-lived ones (torch,
Beam, the model). CPython's defaults (thresholds 700, 10, 10) run a full collection, which walks
every tracked object, whenever enough young objects survived: in the features spec at 32 streams
(a 100,000-frame backlog on the embedded runner) 27 full collections took 4.2 s of the run's
~20 s, ~150 ms each, and every one stalled the pipeline thread (``benchmarks/README.md``,
"session 15").

:func:`tune_gc` does what long-running Python services do (CPython's ``gc.freeze`` docs):

* one ``gc.collect()`` then ``gc.freeze()``, once the inference DoFn has loaded its model: what
  the worker holds by then (modules, the model, Beam's worker) moves to the permanent generation,
  so later collections walk only what was allocated since;
* thresholds ``(50_000, 20, 10)``: a young collection every 50,000 net allocations instead of 700
  (cyclic garbage waits a little longer for its memory; objects without cycles are freed by
  reference counting at once, as always).

Measured one run after the other (100,000 frames, 32 streams, batched): 6,067 frames/s with the
defaults, 8,045 tuned; GC time 4.8 s -> 0.7 s. Side by side against the code before it
(``bench_e2e.py --before``, 20,000 frames): 5,912 -> 7,910 frames/s.

Process-wide and once per process, like :func:`~costream.transforms.allocator.tune_allocator`;
``COSTREAM_GC_TUNING=0`` keeps CPython's defaults. Objects frozen are never collected: a
worker that keeps loading models (not costream's) would keep each one's garbage.
"""

from __future__ import annotations

import gc
import logging
import os

__all__ = ["ENV", "THRESHOLDS", "tune_gc"]

ENV = "COSTREAM_GC_TUNING"
THRESHOLDS = (50_000, 20, 10)
"""gc.set_threshold's (gen0, gen1, gen2) once tuned."""

log = logging.getLogger(__name__)
_done: bool | None = None  # this process's outcome (the collector is process-wide)


def tune_gc() -> bool:
    """Freeze what the worker holds and raise the young threshold; True once done here.

    Process-wide and idempotent: the first call decides, later calls return its outcome.
    """
    global _done
    if _done is not None:
        return _done
    if os.environ.get(ENV, "1") == "0":
        log.info("%s=0: the garbage collector keeps CPython's defaults", ENV)
        _done = False
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.info(
        "garbage collector: %d objects frozen, thresholds %s", gc.get_freeze_count(), THRESHOLDS
    )
    _done = True
    return True
