"""transforms/allocator.py: glibc keeps freed memory for reuse, once per process, and can be left alone."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "assets" / "demo_model.safetensors"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def _child(code: str, env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "COSTREAM_MALLOC_TUNING"}
    if env_value is not None:
        env["COSTREAM_MALLOC_TUNING"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


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


def test_turned_off_by_the_environment():
    out = _child(
        "from costream.transforms.allocator import tune_allocator; print(tune_allocator())", "0"
    )
    assert out == "False"


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
