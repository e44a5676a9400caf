"""``costream transforms [NAME]``: the reference of costream's Beam YAML types (docs/yaml.md)."""

from __future__ import annotations

import argparse
import difflib
from typing import Any

HELP = "Print the reference of costream's Beam YAML transforms (keys, types, defaults, outputs)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one type, e.g. ContinualInference; default: all")
    p.epilog = "The whole reference is docs/yaml.md: costream transforms > docs/yaml.md"


def run(args: Any, extra: list[str]) -> int:
    from costream.pipelines.configs import TYPES
    from costream.pipelines.yaml_reference import reference, section

    if args.name is None:
        print(reference(), end="")
        return 0
    if args.name not in TYPES:
        near = difflib.get_close_matches(args.name, list(TYPES), n=1)
        hint = f" Did you mean {near[0]}?" if near else ""
        raise SystemExit(
            f"costream has no YAML type {args.name!r}.{hint} The types are {', '.join(TYPES)}."
        )
    print(section(TYPES[args.name]), end="")
    return 0
