"""Benchmarks of an older revision side by side: its code in a git worktree, run in a child.

A benchmark's ``--before REV`` makes a detached worktree of ``REV`` (:func:`worktree`) and runs
its measurements in child processes with ``COSTREAM_BENCH_SRC`` set to it; the child calls
:func:`use_source` before it imports costream, which points the editable install's subpackages
(``costream.models`` -> ``<checkout>/models`` ...) at the worktree. Both sides then run the same
benchmark code under the same load, alternating, in one run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

ENV = "COSTREAM_BENCH_SRC"
ROOT = Path(__file__).resolve().parents[1]


def use_source() -> Path:
    """The checkout whose code this process measures: ``$COSTREAM_BENCH_SRC``, else this one.

    Call it before anything imports costream.
    """
    src = os.environ.get(ENV)
    if not src:
        return ROOT
    import __editable___costream_0_1_0_finder as finder  # type: ignore[import-not-found]

    for name, path in list(finder.MAPPING.items()):
        finder.MAPPING[name] = path.replace(str(ROOT), src, 1)
    return Path(src)


def child_env(src: str | None) -> dict[str, str]:
    """This process's environment for a child measuring ``src`` (None: this checkout)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if src is not None:
        env[ENV] = src
    return env


def worktree(rev: str) -> str:
    """A detached ``git worktree`` of ``rev`` in a temporary folder (:func:`remove_worktree`)."""
    path = os.path.join(tempfile.mkdtemp(prefix="costream-bench-"), "src")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", path, rev], check=True
    )
    return path


def remove_worktree(path: str) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", path], check=True)
