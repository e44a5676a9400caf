"""``costream consume``: print detections from a topic as JSON lines."""

from __future__ import annotations

import argparse

HELP = "Print detections (or dead-letter records) from a topic as JSON lines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers"
    )
    parser.add_argument("--topic", required=True, help="topic to read")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the earliest offset (default: new records only)",
    )
    parser.add_argument("--max", type=int, default=None, metavar="N", help="stop after N records")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds without a record",
    )
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        default=None,
        help="at the end, write a PNG of each stream's top score over its frame index",
    )


def record_to_json(record) -> tuple[str, bool]:  # kafka ConsumerRecord
    """One output line for a record and whether it was valid.

    Detections print as their validated JSON; dead-letter records (``costream.error`` header) as
    ``{"dead_letter": ...}``; anything else as ``{"invalid": reason, ...}``.
    """
    import base64
    import json

    from costream.connectors import contract

    headers = [(k, bytes(v or b"")) for k, v in record.headers]
    where = {"partition": record.partition, "offset": record.offset}
    key = None if record.key is None else record.key.decode("utf-8", "replace")
    try:
        error = contract.header_value(headers, contract.HEADER_ERROR)
    except contract.CodecError:
        error = b"(malformed costream.error header)"
    if error is not None:
        stage = contract.header_value(headers, contract.HEADER_STAGE) or b""
        obj = {"dead_letter": True, "key": key, "error": error.decode("utf-8", "replace"),
               "stage": stage.decode("utf-8", "replace"), "value_bytes": len(record.value or b""), **where}  # fmt: skip
        return json.dumps(obj), True
    try:
        det = contract.decode_detection(record.value or b"")
    except contract.CodecError as err:
        preview = base64.b64encode((record.value or b"")[:48]).decode()
        return json.dumps(
            {"invalid": str(err), "key": key, "value_b64_prefix": preview, **where}
        ), False
    return json.dumps(contract.detection_to_dict(det)), True


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Print records until --max or --timeout; exit 0, or 1 when Kafka cannot be reached."""
    import sys
    import time

    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    if args.max is not None and args.max < 1:
        print("costream consume: --max must be >= 1.", file=sys.stderr)
        return 2
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=args.bootstrap, enable_auto_commit=False, client_id="costream-consume"
        )
        partitions = consumer.partitions_for_topic(args.topic)
        if not partitions:
            print(
                f"costream consume: topic {args.topic!r} does not exist on {args.bootstrap}.",
                file=sys.stderr,
            )
            return 1
        tps = [TopicPartition(args.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)  # explicit assignment: no group join, output starts at once
        if args.from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
    except KafkaError as err:
        print(
            f"costream consume: cannot read {args.topic!r} at {args.bootstrap}: {err}",
            file=sys.stderr,
        )
        return 1
    printed = invalid = 0
    top_scores: dict[str, list[tuple[int, float]]] = {}
    last = time.monotonic()
    try:
        while args.max is None or printed < args.max:
            batch = consumer.poll(timeout_ms=200, max_records=500)
            records = sorted(
                (r for rs in batch.values() for r in rs),
                key=lambda r: (r.timestamp, r.partition, r.offset),
            )
            for record in records:
                line, ok = record_to_json(record)
                print(line, flush=True)
                printed += 1
                invalid += not ok
                if ok and args.plot is not None:
                    _add_top_score(top_scores, line)
                if args.max is not None and printed >= args.max:
                    break
            if records:
                last = time.monotonic()
            elif args.timeout is not None and time.monotonic() - last >= args.timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close(autocommit=False)
    if invalid:
        print(
            f"costream consume: {invalid} of {printed} records were not valid detections.",
            file=sys.stderr,
        )
    if args.plot is not None:
        from costream.pipelines.plots import plot_top_scores

        path = plot_top_scores(top_scores, args.plot)
        print(f"costream consume: plot of {len(top_scores)} stream(s) in {path}", file=sys.stderr)
    return 0


def _add_top_score(series: dict[str, list[tuple[int, float]]], line: str) -> None:
    """Add a detection line's (frame index, top score) to its stream's series (dead letters: no)."""
    import json

    obj = json.loads(line)
    if "top" in obj:
        series.setdefault(obj["stream_id"], []).append((obj["frame_index"], obj["top"]["score"]))
