"""Kafka throughput: produce, a plain kafka-python consumer loop, and ReadFromKafka on Beam.

One run starts each broker kind in turn (tansu, then Apache Kafka; or uses --bootstrap) and, on
each, publishes the same 640x480 JPEG frames uncompressed and lz4-compressed, then reads them
back with a plain consumer loop and with ReadFromKafka, so brokers and codecs sit side by side.
The Beam number is given twice: end to end (``p.run()`` wall time, pipeline start-up included)
and steady state (first to last record seen by the DoFn after the reader).

    .venv/bin/python benchmarks/bench_kafka.py [--frames 1500] [--brokers tansu,kafka]
        [--codecs none,lz4] [--partitions 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from costream.connectors import contract
from costream.connectors.broker import make_broker
from costream.connectors.kafka import ReadFromKafka
from costream.connectors.synthetic import iter_synthetic_video
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from tqdm import tqdm


class TimeBundles(beam.DoFn):
    """Per bundle: count, first and last wall time; appended to a file in finish_bundle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def start_bundle(self) -> None:
        self.n, self.first, self.last, self.nbytes = 0, None, None, 0

    def process(self, record):
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.last = now
        self.n += 1
        self.nbytes += len(record.value)
        return ()

    def finish_bundle(self) -> None:
        if self.n:
            with open(self.path, "a") as f:
                f.write(f"{self.n} {self.first} {self.last} {self.nbytes}\n")


def make_frames(n_distinct: int, noise: float) -> list[bytes]:
    # Sensor-like noise makes the JPEGs camera-sized; flat synthetic frames compress to ~12 KiB.
    rng = np.random.default_rng(0)
    frames = []
    for _, _, rgb, _ in tqdm(iter_synthetic_video(n_distinct, (640, 480), 25.0, seed=0), total=n_distinct,
                             desc="encode 640x480 JPEG", file=sys.stderr):  # fmt: skip
        noisy = (
            np.clip(rgb + rng.normal(0, noise, rgb.shape), 0, 255).astype(np.uint8)
            if noise
            else rgb
        )
        frames.append(contract.encode_jpeg(noisy, 90))
    return frames


def produce(
    bootstrap: str, topic: str, payloads: list[bytes], n: int, partitions: int, codec: str | None
) -> tuple[float, int]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=1 << 20,
                             max_request_size=8 << 20, compression_type=codec)  # fmt: skip
    start_ms = int(time.time() * 1000)
    nbytes = 0
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc="produce", file=sys.stderr, unit="frame"):
        rec = contract.frame_record(f"cam-{i % partitions}", i // partitions, start_ms + 40 * i, contract.CT_JPEG,
                                  payloads[i % len(payloads)])  # fmt: skip
        producer.send(topic, key=rec.key, value=rec.value, headers=rec.headers, partition=i % partitions,
                      timestamp_ms=start_ms + 40 * i)  # fmt: skip
        nbytes += len(rec.value)
    producer.flush()
    elapsed = time.perf_counter() - t0
    producer.close()
    return elapsed, nbytes


def plain_consume(bootstrap: str, topic: str, n: int, partitions: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=500,
                             fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)  # fmt: skip
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got = 0
    t0 = time.perf_counter()
    with tqdm(total=n, desc="plain consumer", file=sys.stderr, unit="frame") as bar:
        while got < n:
            batch = consumer.poll(timeout_ms=1000)
            k = sum(len(v) for v in batch.values())
            got += k
            bar.update(k)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return elapsed


def beam_consume(
    bootstrap: str, topic: str, n: int, partitions: int, per_bundle: int
) -> tuple[float, float, int]:
    path = os.path.join(tempfile.mkdtemp(), "bundles.txt")
    per_partition = n // partitions
    read = ReadFromKafka(bootstrap, topic, max_records=per_partition, max_records_per_bundle=per_bundle,
                         client_config={"fetch_max_bytes": 64 << 20, "max_partition_fetch_bytes": 16 << 20})  # fmt: skip
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(streaming=True))
    _ = p | read | beam.ParDo(TimeBundles(path))
    print("ReadFromKafka on the FnApiRunner ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    p.run().wait_until_finish()
    total = time.perf_counter() - t0
    rows = [line.split() for line in open(path)]
    count = sum(int(r[0]) for r in rows)
    first = min(float(r[1]) for r in rows)
    last = max(float(r[2]) for r in rows)
    return total, last - first, count


def run_case(
    bootstrap: str, payloads: list[bytes], n: int, args: argparse.Namespace, codec: str | None
) -> tuple[float, float, float, float, int]:
    """Produce (with ``codec``), read with the plain loop and with ReadFromKafka; seconds."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])
    try:
        t_prod, nbytes = produce(bootstrap, topic, payloads, n, args.partitions, codec)
        t_plain = plain_consume(bootstrap, topic, n, args.partitions)
        t_beam, t_steady, got = beam_consume(bootstrap, topic, n, args.partitions, args.per_bundle)
    finally:
        admin.delete_topics([topic])
        admin.close()
    if got != n:
        raise SystemExit(f"ReadFromKafka delivered {got} of {n} records")
    return t_prod, t_plain, t_beam, t_steady, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--frames", type=int, default=1500, help="frames to publish and read (default 1500)"
    )
    ap.add_argument("--partitions", type=int, default=1, help="topic partitions (default 1)")
    ap.add_argument("--distinct", type=int, default=100, help="distinct frames to encode (cycled)")
    ap.add_argument(
        "--noise", type=float, default=4.0, help="Gaussian pixel noise (std) added to frames"
    )
    ap.add_argument(
        "--per-bundle", type=int, default=500, help="ReadFromKafka max_records_per_bundle"
    )
    ap.add_argument("--brokers", default="tansu,kafka", help="broker kinds to start, in order")
    ap.add_argument("--codecs", default="none,lz4", help="producer compression types")
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of starting any")
    args = ap.parse_args()
    n = args.frames - args.frames % args.partitions
    codecs_ = [None if c == "none" else c for c in args.codecs.split(",")]
    payloads = make_frames(args.distinct, args.noise)
    mean_kb = np.mean([len(p) for p in payloads]) / 1024

    results = []
    kinds = [args.bootstrap] if args.bootstrap else args.brokers.split(",")
    for kind in kinds:
        broker = None if args.bootstrap else make_broker(kind).start()
        bootstrap = args.bootstrap or broker.bootstrap
        try:
            for codec in codecs_:
                print(f"broker {kind}, compression {codec}", file=sys.stderr, flush=True)
                results.append(
                    (kind, codec or "none", *run_case(bootstrap, payloads, n, args, codec))
                )
        finally:
            if broker is not None:
                broker.stop()

    print()
    print(f"{n} frames, 640x480 JPEG q90 (mean {mean_kb:.0f} KiB), {args.partitions} partition(s), "
          f"max_records_per_bundle={args.per_bundle}; frames/s (MB/s of payload)")  # fmt: skip
    print(f"{'broker':<8} {'codec':<6} {'produce':>16} {'plain consumer':>16} "
          f"{'ReadFromKafka e2e':>18} {'ReadFromKafka steady':>21}")  # fmt: skip
    print("-" * 90)
    for kind, codec, t_prod, t_plain, t_beam, t_steady, nbytes in results:
        mb = nbytes / 1e6
        cells = [f"{n / t:>7.0f} ({mb / t:>5.1f})" for t in (t_prod, t_plain, t_beam, t_steady)]
        print(f"{kind:<8} {codec:<6} {cells[0]:>16} {cells[1]:>16} {cells[2]:>18} {cells[3]:>21}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
