"""The worker's process-wide tuning, once per process, each one switched off by its variable.

transforms/allocator.py: glibc keeps freed memory for reuse; transforms/gc_tuning.py: what the
worker holds is frozen out of the garbage collector's walk and young collections are rarer.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "assets" / "demo_model.safetensors"

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def _child(code: str, env_value: str | None, name: str = "COSTREAM_MALLOC_TUNING") -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("COSTREAM_MALLOC_TUNING", name)}
    if env_value is not None:
        env[name] = env_value
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@glibc_only
def test_tuned_once_and_large_blocks_still_allocate_in_threads():
    out = _child(
        """
        import threading
        from costream.transforms.allocator import tune_allocator
        first, again = tune_allocator(), tune_allocator()
        sizes = []
        def work():  # blocks above the old mmap threshold, in a thread arena and in the main one
            for mb in (40, 100):
                sizes.append(len(bytearray(mb << 20)))
        t = threading.Thread(target=work)
        t.start(); t.join(); work()
        print(first, again, sizes)
        """,
        None,
    )
    assert out == f"True True {[40 << 20, 100 << 20] * 2}"


@glibc_only
def test_turned_off_by_the_environment():
    out = _child(
        "from costream.transforms.allocator import tune_allocator; print(tune_allocator())", "0"
    )
    assert out == "False"


@glibc_only
def test_the_batched_dofn_tunes_its_process():
    out = _child(
        """
        from costream.transforms import allocator
        from costream.transforms.batching import BatchedInferenceFn
        fn = BatchedInferenceFn(WEIGHTS)
        fn.setup()
        print(allocator._done)
        """.replace("WEIGHTS", repr(str(DEMO))),
        None,
    )
    assert out == "True"


def test_gc_tuned_once_frozen_and_thresholds_raised():
    out = _child(
        """
        import gc
        from costream.transforms.gc_tuning import THRESHOLDS, tune_gc
        before = gc.get_threshold()
        first, again = tune_gc(), tune_gc()
        print(first, again, before, gc.get_threshold() == THRESHOLDS, gc.get_freeze_count() > 1000)
        """,
        None,
        "COSTREAM_GC_TUNING",
    )
    assert out == "True True (700, 10, 10) True True"


def test_gc_turned_off_by_the_environment():
    out = _child(
        """
        import gc
        from costream.transforms.gc_tuning import tune_gc
        print(tune_gc(), gc.get_threshold(), gc.get_freeze_count())
        """,
        "0",
        "COSTREAM_GC_TUNING",
    )
    assert out == "False (700, 10, 10) 0"


@pytest.mark.parametrize("batched", [False, True])
def test_both_inference_dofns_tune_the_collector_once_the_model_is_loaded(batched):
    out = _child(
        """
        import gc
        from costream.transforms.batching import BatchedInferenceFn
        from costream.transforms.inference import ContinualInferenceFn
        fn = (BatchedInferenceFn if BATCHED else ContinualInferenceFn)(WEIGHTS)
        fn.setup()
        print(gc.get_threshold(), gc.get_freeze_count() > 0)
        """.replace("WEIGHTS", repr(str(DEMO))).replace("BATCHED", str(batched)),
        None,
        "COSTREAM_GC_TUNING",
    )
    assert out == "(50000, 20, 10) True"
