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
"""

from __future__ import annotations

import argparse
import importlib
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
    with logs.configured(args.log_level or getattr(module, "LOG_LEVEL", "WARNING")):
        return int(module.run(args, extra) or 0)


if __name__ == "__main__":
    sys.exit(main())
