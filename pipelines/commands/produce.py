"""``costream produce``: publish a video, audio file, image folder or features file as a stream."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costream.connectors.sources import Source

from costream.connectors.sources import DEFAULT_CHUNK_MS

HELP = "Publish a video/audio file, image folder, .npy features or synthetic:video|audio to Kafka."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "source",
        help="video or audio file, image folder, features .npy (T, D), synthetic:video or synthetic:audio",
    )
    parser.add_argument(
        "--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers"
    )
    parser.add_argument("--topic", required=True, help="destination topic (created if missing)")
    parser.add_argument("--stream-id", required=True, help="stream id: the record key")
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="resample video / pace images and features at this rate",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="publish at the media's pace instead of as fast as possible",
    )
    parser.add_argument(
        "--content-type", default=None, help="image/jpeg (default) or image/png for frames"
    )
    parser.add_argument("--size", default=None, metavar="WxH", help="resize frames, e.g. 320x240")
    parser.add_argument(
        "--rate", type=int, default=16000, help="audio sample rate in Hz (default 16000)"
    )
    parser.add_argument(
        "--chunk-ms",
        type=int,
        default=DEFAULT_CHUNK_MS,
        help=f"audio chunk length in ms (default {DEFAULT_CHUNK_MS}: what the logmel backbone of "
        "pipelines/specs/audio.yaml takes at 16 kHz; 250 for the vggish backbone of "
        "pipelines/specs/gtzan.yaml)",
    )
    parser.add_argument("--limit", type=int, default=None, help="publish at most this many records")
    parser.add_argument(
        "--partitions", type=int, default=1, help="partitions when creating the topic (default 1)"
    )
    parser.add_argument(
        "--audio-stream",
        type=int,
        default=None,
        metavar="N",
        help="publish audio stream N of the file (0: the first; e.g. the sound of a video file) "
        "instead of its video",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of synthetic sources (synthetic:video: grey frames with moving distractors and "
        "red_square / blue_circle actions; synthetic:audio: 880 Hz tones and noise bursts)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise ValueError(f"--size {text!r} is not WIDTHxHEIGHT, e.g. 320x240.")
    return int(w), int(h)


def ensure_topic(bootstrap: str, topic: str, partitions: int) -> bool:
    """Create ``topic`` unless it exists; returns whether it was created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="costream-produce")
    try:
        if topic in admin.list_topics():
            return False
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


def open_source_from_args(args: argparse.Namespace) -> Source:
    """The records the command publishes, from its parsed arguments."""
    from costream.connectors.sources import open_source

    return open_source(
        args.source,
        args.stream_id,
        fps=args.fps,
        size=_size(args.size),
        content_type=args.content_type,
        rate=args.rate,
        chunk_ms=args.chunk_ms,
        limit=args.limit,
        seed=args.seed,
        audio_stream=args.audio_stream,
    )


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Publish every record, flush, and report; exit 2 on bad input, 1 on a Kafka error."""
    import sys
    import time

    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from costream.connectors.media import MediaError

    try:
        source = open_source_from_args(args)
    except (ValueError, MediaError, OSError) as err:
        print(f"costream produce: {err}", file=sys.stderr)
        return 2
    try:
        created = ensure_topic(args.bootstrap, args.topic, args.partitions)
        producer = KafkaProducer(
            bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, client_id="costream-produce"
        )
    except KafkaError as err:
        print(f"costream produce: cannot reach Kafka at {args.bootstrap}: {err}", file=sys.stderr)
        return 1
    if created:
        print(f"created topic {args.topic} ({args.partitions} partition(s))", file=sys.stderr)
    futures = []
    sent_bytes = 0
    t0 = time.monotonic()
    try:
        bar = tqdm(source.records, total=source.count, unit=source.kind if source.kind != "video" else "frame",
                   disable=args.no_progress, file=sys.stderr, desc=f"{args.stream_id} -> {args.topic}")  # fmt: skip
        for record, media_s in bar:
            if args.realtime:
                delay = t0 + media_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            ts_ms = int(dict(record.headers)["costream.ts_ms"])
            futures.append(
                producer.send(
                    args.topic,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    timestamp_ms=ts_ms,
                )
            )
            sent_bytes += len(record.value)
        producer.flush()
        failed = [f for f in futures if f.failed()]
    except (ValueError, MediaError) as err:
        print(f"costream produce: {err}", file=sys.stderr)
        return 2
    except KafkaError as err:
        print(f"costream produce: Kafka error: {err}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    elapsed = time.monotonic() - t0
    if failed:
        print(
            f"costream produce: {len(failed)} of {len(futures)} records failed: {failed[0].exception}",
            file=sys.stderr,
        )
        return 1
    print(
        f"published {len(futures)} records ({sent_bytes / 1e6:.1f} MB) to {args.topic} "
        f"in {elapsed:.2f} s ({len(futures) / max(elapsed, 1e-9):.0f} records/s)"
    )
    return 0
