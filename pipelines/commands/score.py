"""``costream score SPEC --input FILE``: the spec over a file, no Kafka; detections as JSON lines.

The file is read lazily and scored in chunks of records (:func:`costream.pipelines.offline.iter_scores`),
so memory stays bounded whatever its length; detections are printed as each chunk finishes, and a
progress bar on stderr counts the records read (shown only when stderr is a terminal, never with
``--quiet``).
"""

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
    p.add_argument(
        "--audio-stream",
        type=int,
        default=None,
        metavar="N",
        help="score audio stream N of the file (0: the first; e.g. the sound of a video file, "
        "for an audio spec) instead of its video",
    )
    p.add_argument(
        "--chunk-records",
        type=int,
        default=None,
        metavar="N",
        help="records per pipeline run (default: offline.DEFAULT_CHUNK_RECORDS, 2048); memory "
        "is bounded by this, not by the file's length",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: Any, extra: list[str]) -> int:
    from tqdm import tqdm

    from costream.connectors.sources import open_source
    from costream.pipelines.offline import DEFAULT_CHUNK_RECORDS, iter_scores

    source = open_source(
        args.input,
        args.stream_id,
        fps=args.fps,
        limit=args.limit,
        start_ms=args.start_ms,
        audio_stream=args.audio_stream,
    )
    bar = tqdm(
        (rec for rec, _media_s in source.records),
        total=source.count,
        unit="frame" if source.kind in ("video", "images") else "record",
        file=sys.stderr,
        disable=args.quiet or not sys.stderr.isatty(),
        desc=args.stream_id,
    )
    n_out = n_dead = 0
    with bar:
        for out, dead in iter_scores(
            args.spec, bar, chunk_records=args.chunk_records or DEFAULT_CHUNK_RECORDS
        ):
            for r in out:
                sys.stdout.write(r.value.decode("utf-8") + "\n")
            sys.stdout.flush()
            for r in dead:
                bar.write(
                    f"dead letter: {dict(r.headers).get('costream.error', b'').decode()}",
                    file=sys.stderr,
                )
            n_out, n_dead = n_out + len(out), n_dead + len(dead)
    print(f"{n_out} detections, {n_dead} dead letters", file=sys.stderr)
    return 0
