"""costream.pipelines: Beam YAML specs, their loader and runner, and the ``costream`` CLI.

The main entry points, re-exported lazily (Beam loads on first use):

- :mod:`~costream.pipelines.spec`: ``load_spec`` (read, expand and validate a spec),
  ``build_pipeline``, ``SpecError``;
- :mod:`~costream.pipelines.runner`: ``run_spec`` (what ``costream run`` does);
- :mod:`~costream.pipelines.offline`: ``score_records`` (what ``costream score`` does);
- :mod:`~costream.pipelines.cli`: the command line; :mod:`~costream.pipelines.logs` its logging.

Example:
    >>> from costream.pipelines import run_spec
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SpecError": "spec",
    "build_pipeline": "spec",
    "load_spec": "spec",
    "run_spec": "runner",
    "score_records": "offline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'costream.pipelines' has no attribute {name!r}")
    return getattr(importlib.import_module(f"costream.pipelines.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)
