"""What the ``costream`` CLI logs on stderr: pipeline events for people, without Beam's internals.

Like Beam YAML's own entry point (``python -m apache_beam.yaml.main`` sets the root logger to
INFO), ``costream run``, ``demo`` and ``score`` show INFO from every logger: costream's status
line and summary, Beam YAML's ``Expanding "ReadFromKafka" at line 3``, the job's state, and the
output of Beam YAML's ``LogForTesting`` (which logs to the root logger). Other commands show
warnings only. ``--log-level`` changes either::

    costream run SPEC --log-level WARNING     # warnings and errors only (no status lines)
    costream --log-level DEBUG run SPEC       # everything, Beam's internals included

Below DEBUG's "everything", records in :data:`NOISE` are left out: each names its logger, the
highest level it hides and, where the same logger also says things that matter, the message, so
real warnings (costream's dead letters and stream epochs, Kafka connection errors, Beam's
warnings about a user's own transforms) always show. One Python warning is ignored likewise:
numpy's ``RankWarning: Polyfit may be poorly conditioned`` from Beam's BatchElements, which fits
batch size against time and copes with a poor fit itself.

Example:
    >>> with configured("WARNING"):
    ...     logging.getLogger("costream").warning("shown on stderr")
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

__all__ = ["LEVELS", "NOISE", "Noise", "NoiseFilter", "configured"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Noise:
    """Records to leave out: from ``logger`` or its children, at ``up_to`` or below.

    ``logger`` is a logger name (``"root"``: the module-level ``logging.info`` and friends, which
    Beam's ML and runner modules use); ``message`` (a regular expression searched in the
    formatted message) and ``path`` (a part of the emitting file's path) narrow it further.
    """

    logger: str
    up_to: int
    why: str
    message: str | None = None
    path: str | None = None

    def matches(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is this noise."""
        name = record.name
        if record.levelno > self.up_to:
            return False
        if not (name == self.logger or name.startswith(self.logger + ".")):
            return False
        if self.path is not None and self.path not in record.pathname.replace("\\", "/"):
            return False
        return self.message is None or re.search(self.message, _text(record)) is not None


NOISE: tuple[Noise, ...] = (
    Noise(
        "apache_beam.transforms.core",
        logging.WARNING,
        "Beam's streaming BatchElements keys its buffer by a per-process UUID string, which "
        "codes deterministically; the warning still shows for other stateful DoFns",
        message=r"^Key coder \S+ for transform .*_StatefulBatchElementsDoFn.* may not be "
        r"deterministic",
    ),
    Noise(
        "apache_beam.transforms.core",
        logging.WARNING,
        "costream's Kafka writers and collectors are sinks: they emit nothing on purpose; the "
        "warning still shows for anyone else's DoFn",
        # Beam 2.62 passes (format, class) as one tuple, so the text is the tuple's repr
        message=r"No iterator is returned by the process method in .*<class 'costream\.",
    ),
    Noise(
        "apache_beam.typehints",
        logging.INFO,
        "type-hint conversions (string annotations under `from __future__ import annotations`)",
    ),
    Noise(
        "apache_beam.io.gcp",
        logging.INFO,
        "optional Google Cloud clients that are not installed (BigQuery storage, apitools)",
    ),
    Noise(
        "apache_beam",
        logging.WARNING,
        "the optional apitools library (Google Cloud IO only)",
        message=r"\bapitools\b",
    ),
    Noise(
        "root",
        logging.WARNING,
        "Beam's RunInference memory metric on a platform without the resource module",
        message=r"^Resource module is not available",
        path="apache_beam/ml/",
    ),
    Noise(
        "root",
        logging.INFO,
        "Beam's ML modules log model loading to the root logger",
        path="apache_beam/ml/",
    ),
    Noise(
        "apache_beam.runners.worker",
        logging.INFO,
        "SDK harness start-up: channels, state cache, worker pool",
    ),
    Noise(
        "apache_beam.runners.portability.fn_api_runner.worker_handlers",
        logging.INFO,
        "the embedded runner's control, data, state and logging servers",
    ),
    Noise(
        "root",
        logging.INFO,
        "the portable runner echoes each job message to the root logger (INFO ones repeat "
        "records already logged, or left out, above)",
        path="apache_beam/runners/portability/portable_runner.py",
    ),
    Noise(
        "apache_beam.runners.portability.portable_runner",
        logging.INFO,
        'advice to use "with Pipeline() as p" (costream waits for the job itself)',
        message=r"^Environment \"LOOPBACK\" has started a component",
    ),
    Noise(
        "apache_beam.utils.subprocess_server",
        logging.INFO,
        "the Java job server's own log, line by line (its errors still show)",
    ),
    Noise(
        "kafka",
        logging.INFO,
        "kafka-python's connection and metadata chatter (its warnings and errors still show)",
    ),
    Noise(
        "kafka.net.selector",
        logging.WARNING,
        "kafka-python's own event-loop check (like asyncio's slow-callback warning): a step "
        "over 0.1 s, which a busy CPU (the model, the GIL) causes without anything being wrong",
        message=r"^Task .* ran for [\d.]+s \(>[\d.]+s threshold\)",
    ),
)
"""The log records :class:`NoiseFilter` leaves out (none at DEBUG)."""


def _text(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a record whose arguments do not fit its format
        return str(record.msg)


class NoiseFilter(logging.Filter):
    """Leaves out the records that match one of ``noise`` (default :data:`NOISE`)."""

    def __init__(self, noise: tuple[Noise, ...] = NOISE) -> None:
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n.matches(record) for n in self.noise)


class _Formatter(logging.Formatter):
    """``time LEVEL message``; records of other libraries say whose they are (``LEVEL name: ``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._named = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        own = record.name == "root" or record.name.split(".")[0] == "costream"
        return super().format(record) if own else self._named.format(record)


@contextmanager
def configured(level: str = "INFO", stream: TextIO | None = None) -> Iterator[logging.Handler]:
    """Log ``level`` and above from every logger to ``stream`` (``sys.stderr``) while inside.

    One handler on the root logger, with :class:`NoiseFilter` and numpy's polyfit warning from
    Beam ignored unless ``level`` is DEBUG. Enter before Beam builds its ``PipelineOptions``
    (whose ``logging.basicConfig()`` then adds nothing). On leaving, the root logger's level and
    handlers and the warning filters are as before (the CLI's ``main`` runs many commands in one
    test process). Yields the handler. Raises ``ValueError`` for a level not in :data:`LEVELS`.
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"Unknown log level {level!r}; use one of {', '.join(LEVELS)}.")
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(_Formatter())
    quiet = name != "DEBUG"
    if quiet:
        handler.addFilter(NoiseFilter())
    saved_level = root.level
    with warnings.catch_warnings():  # restores the filters on leaving
        if quiet:
            # numpy sets RankWarning to "always" on first import: import it before filtering
            from numpy.exceptions import RankWarning

            warnings.filterwarnings(
                "ignore",
                message="Polyfit may be poorly conditioned",
                category=RankWarning,
                module=r"apache_beam\.transforms\.util",
            )
        root.addHandler(handler)
        root.setLevel(name)
        try:
            yield handler
        finally:
            root.removeHandler(handler)
            root.setLevel(saved_level)
