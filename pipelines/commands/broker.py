"""``costream broker``: run a local broker (tansu, or Apache Kafka) in the foreground."""

from __future__ import annotations

import argparse

HELP = (
    "Run a local broker on loopback until interrupted: the embedded tansu (in memory, the "
    "default) or Apache Kafka (KRaft, persistent log in --data-dir)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--kind",
        choices=("tansu", "kafka"),
        default="tansu",
        help="tansu (embedded, in memory; default) or kafka (Apache Kafka from the fetched jars)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: a free one)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="kind kafka: keep the log here; a restart on the same folder keeps the data "
        "(default: a temporary folder removed on exit)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic once the broker is up, unless it exists (repeatable; neither "
        "broker auto-creates topics for consumers)",
    )


def _parse_topic(spec: str) -> tuple[str, int]:
    name, _, parts = spec.partition(":")
    if not name or (parts and not parts.isdigit()) or (parts and int(parts) < 1):
        raise ValueError(f"--topic {spec!r} is not NAME or NAME:PARTITIONS (PARTITIONS >= 1).")
    return name, int(parts or 1)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Start the broker, print its bootstrap address, and wait for Ctrl-C or SIGTERM."""
    import signal
    import sys
    import threading

    from costream.connectors.broker import BrokerError, make_broker

    try:
        topics = [_parse_topic(t) for t in args.topic]
        broker = make_broker(args.kind, args.port, host=args.host, data_dir=args.data_dir)
    except ValueError as err:
        print(f"costream broker: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with broker:
            existing = set(broker.admin().list_topics())
            for name, partitions in topics:
                if name not in existing:  # a restarted Kafka broker keeps its topics
                    broker.create_topics([name], partitions=partitions)
            print(f"bootstrap: {broker.bootstrap}", flush=True)
            for name, partitions in topics:
                print(
                    f"topic: {name} ({partitions} partition{'s' if partitions > 1 else ''})",
                    flush=True,
                )
            try:
                while not stop.wait(0.5):
                    if not broker.running:
                        print(
                            f"costream broker: {args.kind} exited.\n{broker.output()}",
                            file=sys.stderr,
                        )
                        return 1
            except KeyboardInterrupt:
                pass
            print("stopping", flush=True)
    except BrokerError as err:
        print(f"costream broker: {err}", file=sys.stderr)
        return 1
    return 0
