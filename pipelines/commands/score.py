"""``costream score SPEC --input FILE``: the spec over a file, no Kafka; detections as JSON lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "Run a pipeline spec over a media/features file without Kafka and print detections as JSON lines."
LOG_LEVEL = "INFO"  # as costream run: Beam's pipeline events, LogForTesting (pipelines/logs.py)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="pipeline spec (YAML)")
    p.add_argument(
        "--input",
        required=True,
        help="video/audio/image folder/features file, or synthetic:video|audio",
    )
    p.add_argument("--stream-id", default="file", help="stream id given to the file's frames")
    p.add_argument("--fps", type=float, default=None, help="resample video to this rate")
    p.add_argument("--limit", type=int, default=None, help="at most this many frames")
    p.add_argument("--start-ms", type=int, default=0, help="ts_ms of the first frame (default 0)")


def run(args: Any, extra: list[str]) -> int:
    from costream.connectors.sources import open_source
    from costream.pipelines.offline import score_records

    source = open_source(
        args.input, args.stream_id, fps=args.fps, limit=args.limit, start_ms=args.start_ms
    )
    records = [rec for rec, _offset in source.records]
    out, dead = score_records(args.spec, records)
    for r in out:
        sys.stdout.write(r.value.decode("utf-8") + "\n")
    for r in dead:
        print(
            f"dead letter: {dict(r.headers).get('costream.error', b'').decode()}", file=sys.stderr
        )
    print(f"{len(out)} detections, {len(dead)} dead letters", file=sys.stderr)
    return 0
