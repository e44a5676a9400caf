"""Kafka throughput: produce, a plain kafka-python consumer loop, and ReadFromKafka on Beam.

All three run in one process against one broker (the embedded tansu unless --bootstrap is given)
on the same 640x480 JPEG frames, so the ReadFromKafka / plain-consumer ratio is side by side.
The Beam number is given twice: end to end (``p.run()`` wall time, pipeline start-up included)
and steady state (first to last record seen by the DoFn after the reader).

    .venv/bin/python benchmarks/bench_kafka.py [--frames 3000] [--partitions 1]

"vs plain" is frames/s relative to the best of two plain-consumer runs (one before, one after
the Beam run); the second "plain" row shows the first run's rate and the second run's seconds.
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
from costream.connectors import codecs
from costream.connectors.broker import EmbeddedBroker
from costream.connectors.kafka_io import ReadFromKafka
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
        frames.append(codecs.encode_jpeg(noisy, 90))
    return frames


def produce(
    bootstrap: str, topic: str, payloads: list[bytes], n: int, partitions: int
) -> tuple[float, int]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=1 << 20,
                             max_request_size=8 << 20)  # fmt: skip
    start_ms = int(time.time() * 1000)
    nbytes = 0
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc="produce", file=sys.stderr, unit="frame"):
        rec = codecs.frame_record(f"cam-{i % partitions}", i // partitions, start_ms + 40 * i, codecs.CT_JPEG,
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--frames", type=int, default=3000, help="frames to publish and read (default 3000)"
    )
    ap.add_argument("--partitions", type=int, default=1, help="topic partitions (default 1)")
    ap.add_argument("--distinct", type=int, default=100, help="distinct frames to encode (cycled)")
    ap.add_argument(
        "--noise", type=float, default=4.0, help="Gaussian pixel noise (std) added to frames"
    )
    ap.add_argument(
        "--per-bundle", type=int, default=500, help="ReadFromKafka max_records_per_bundle"
    )
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of the embedded one")
    args = ap.parse_args()
    n = args.frames - args.frames % args.partitions

    broker = None
    if args.bootstrap is None:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    else:
        bootstrap = args.bootstrap
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])
    try:
        payloads = make_frames(args.distinct, args.noise)
        mean_kb = np.mean([len(p) for p in payloads]) / 1024
        t_prod, nbytes = produce(bootstrap, topic, payloads, n, args.partitions)
        # The plain loop runs before and after Beam and the best counts: the ratio must not
        # favour whichever path happened to run while the machine was less busy.
        t_plain_1 = plain_consume(bootstrap, topic, n, args.partitions)
        t_beam, t_beam_steady, got = beam_consume(
            bootstrap, topic, n, args.partitions, args.per_bundle
        )
        t_plain_2 = plain_consume(bootstrap, topic, n, args.partitions)
        t_plain = min(t_plain_1, t_plain_2)
    finally:
        admin.delete_topics([topic])
        admin.close()
        if broker is not None:
            broker.stop()
    if got != n:
        print(f"ReadFromKafka delivered {got} of {n} records", file=sys.stderr)
        return 1

    mb = nbytes / 1e6
    rows = [
        ("produce (acks=all, flushed)", t_prod, n / t_prod, mb / t_prod, ""),
        ("plain KafkaConsumer loop, best", t_plain, n / t_plain, mb / t_plain, "1.00"),
        ("  (runs before / after Beam)", t_plain_1, n / t_plain_1, mb / t_plain_1, f"{t_plain_2:.2f} s"),
        ("ReadFromKafka, end to end", t_beam, n / t_beam, mb / t_beam, f"{t_plain / t_beam:.2f}"),
        ("ReadFromKafka, steady state", t_beam_steady, n / t_beam_steady, mb / t_beam_steady,
         f"{t_plain / t_beam_steady:.2f}"),
    ]  # fmt: skip
    print()
    print(f"{n} frames, 640x480 JPEG q90 (mean {mean_kb:.0f} KiB), {args.partitions} partition(s), "
          f"broker {'embedded tansu' if broker else bootstrap}, max_records_per_bundle={args.per_bundle}")  # fmt: skip
    print(f"{'path':<32} {'seconds':>8} {'frames/s':>10} {'MB/s':>8} {'vs plain':>9}")
    print("-" * 71)
    for name, sec, fps, mbs, ratio in rows:
        print(f"{name:<32} {sec:>8.2f} {fps:>10.0f} {mbs:>8.1f} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
