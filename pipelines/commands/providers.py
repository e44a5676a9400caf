"""``costream providers``: where costream's Beam YAML providers file is installed."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "Print the path of costream's Beam YAML providers file (for a spec's providers: include)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jinja",
        action="store_true",
        help="print the apache_beam.yaml.main flag that points the shipped specs' include at it",
    )
    p.epilog = (
        'python -m apache_beam.yaml.main --yaml_pipeline_file=SPEC "$(costream providers --jinja)"'
    )


def run(args: Any, extra: list[str]) -> int:
    from costream.pipelines.spec import JINJA_VARIABLE, PROVIDERS_FILE

    if args.jinja:
        print("--jinja_variables=" + json.dumps({JINJA_VARIABLE: str(PROVIDERS_FILE)}))
    else:
        print(PROVIDERS_FILE)
    return 0
