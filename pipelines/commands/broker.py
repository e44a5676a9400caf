"""``costream broker``: run the embedded Kafka-protocol broker (tansu) in the foreground."""

from __future__ import annotations

import argparse

HELP = "Run the embedded Kafka-protocol broker (tansu, in memory, loopback) until interrupted."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: a free one)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic once the broker is up (repeatable; tansu never auto-creates topics)",
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

    from costream.connectors.broker import BrokerError, EmbeddedBroker

    try:
        topics = [_parse_topic(t) for t in args.topic]
    except ValueError as err:
        print(f"costream broker: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with EmbeddedBroker(args.port, host=args.host) as broker:
            for name, partitions in topics:
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
                        print(f"costream broker: tansu exited.\n{broker.output()}", file=sys.stderr)
                        return 1
            except KeyboardInterrupt:
                pass
            print("stopping", flush=True)
    except BrokerError as err:
        print(f"costream broker: {err}", file=sys.stderr)
        return 1
    return 0
