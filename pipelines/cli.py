"""The ``costream`` command line.

Each subcommand is one module ``costream.pipelines.commands.<name>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args, extra) -> int``; the CLI discovers them by listing that
package. Command modules import their heavy
dependencies (torch, Beam, Kafka) inside ``run``, so building the parser stays fast and a missing
optional dependency of one command never breaks the others. ``extra`` holds arguments this CLI does not know; commands that build
Beam pipelines hand them to ``PipelineOptions``, all others refuse them.

Every command runs inside one logging setup (:func:`costream.pipelines.logs.configured`) at the
command's ``LOG_LEVEL`` (``"INFO"`` for the commands that run pipelines; others: ``"WARNING"``),
or at ``--log-level``, given before or after the command name.

A user error (an exception class of costream's own, such as a bad spec, weights file or media
file, or a file the OS cannot open) ends the command with one line on stderr,
``costream COMMAND: error: MESSAGE``, and exit status 2; the traceback is shown only with
``--log-level DEBUG`` or ``COSTREAM_TRACEBACK=1``. Other exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from costream.pipelines import commands as _commands
from costream.pipelines import logs


def command_modules() -> dict[str, str]:
    """Map each subcommand name to its module (``costream.pipelines.commands.<name>``)."""
    return {
        info.name: f"{_commands.__name__}.{info.name}"
        for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name)
        if not info.name.startswith("_")
    }


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="costream",
        description="Continual Transformers on live video and audio streams (Beam + Kafka).",
    )
    _add_log_level(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in command_modules().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.set_defaults(_module=module_name)
        module.add_arguments(p)
        _add_log_level(p, argparse.SUPPRESS)  # (keeps a --log-level given before the command)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=logs.LEVELS,
        default=default,
        help="what to log on stderr (default INFO for run, demo and score, WARNING otherwise; "
        "DEBUG: everything, Beam's internals included)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``costream`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    module = importlib.import_module(args._module)
    if extra and not getattr(module, "ACCEPTS_PIPELINE_OPTIONS", False):
        parser.error(f"unrecognized arguments for 'costream {args.command}': {' '.join(extra)}")
    level = args.log_level or getattr(module, "LOG_LEVEL", "WARNING")
    try:
        with logs.configured(level):
            return int(module.run(args, extra) or 0)
    except Exception as err:
        if not is_user_error(err) or level == "DEBUG" or os.environ.get(TRACEBACK_ENV):
            raise
        print(f"costream {args.command}: error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT


TRACEBACK_ENV = "COSTREAM_TRACEBACK"
"""Set (to anything non-empty) to see the traceback of a user error."""
USER_ERROR_EXIT = 2
"""Exit status of a command that stopped on a user error (argparse's, for a bad argument)."""


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports a mistake in the input rather than a bug: one line is enough.

    costream's own exception classes (``SpecError``, ``WeightsError``, ``MediaError``,
    ``ConfigError``, ``CodecError``, ``BrokerUnavailableError``, ...) state what was wrong in a
    sentence, and so does the OS for a file it cannot open (``OSError`` with a file name).
    """
    if isinstance(err, OSError) and err.filename is not None:
        return True
    return any(c.__module__.startswith("costream.") for c in type(err).__mro__)


if __name__ == "__main__":
    sys.exit(main())
