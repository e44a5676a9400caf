"""Kafka throughput: produce, a plain kafka-python consumer loop, and ReadFromKafka on Beam.

One run starts each broker kind in turn (tansu, then Apache Kafka; or uses --bootstrap) and, on
each, publishes the same 640x480 JPEG frames uncompressed and lz4-compressed, then reads them
back with a plain consumer loop and with ReadFromKafka, so brokers and codecs sit side by side.
The Beam number is given twice: end to end (``p.run()`` wall time, pipeline start-up included)
and steady state (first to last record seen by the DoFn after the reader).

    .venv/bin/python benchmarks/bench_kafka.py [--frames 1500] [--brokers tansu,kafka]
        [--codecs none,lz4] [--partitions 1]

``--per-record N`` instead measures, on one tansu broker (or --bootstrap), the per-record
microseconds of costream's own paths with N 64-d feature records from 32 streams (the features
spec's records): (a) ``ReadFromKafka``'s partition read from poll to emitted rows (its DoFn's
``process``, driven with Beam's own restriction tracker and the reader's watermark estimator),
(b) ``WriteToKafka``'s ``process`` + ``finish_bundle`` for detections (also with kafka-python's
producer defaults, which WriteToKafka used before it set its own), (c) detection make + encode, (d)
``decode_record``; (a) and (b) as wall and CPU time (the CPU of the benchmark's process, all its
threads; the wall time includes the broker's share of a loaded machine), with a plain
kafka-python poll loop as the floor of (a). ``--before REV`` runs the same measurements on the
code of git revision REV too (a ``git worktree`` of it, imported in a child process),
interleaved with the working tree's, so before and after come from one run under the same load:

    .venv/bin/python benchmarks/bench_kafka.py --per-record 8000 --before HEAD~1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from revisions import child_env, remove_worktree, use_source, worktree

if __name__ == "__main__":
    use_source()  # the child of --before imports costream from the old revision's worktree

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from tqdm import tqdm

from costream.connectors import contract
from costream.connectors.broker import make_broker
from costream.connectors.kafka import ReadFromKafka
from costream.connectors.synthetic import iter_synthetic_video


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


N_STREAMS = 32
"""Streams (record keys) of the --per-record records, as in bench_e2e's 32-stream runs."""


def _fill_topic(bootstrap: str, n: int) -> str:
    """A new one-partition topic holding ``n`` 64-d feature records of ``N_STREAMS`` streams."""
    topic = f"bench-rec-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    payload, ct = contract.encode_features(np.random.default_rng(0).standard_normal(64))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    start_ms = int(time.time() * 1000) - n
    for i in range(n):
        rec = contract.frame_record(
            f"cam-{i % N_STREAMS}", i // N_STREAMS, start_ms + i, ct, payload
        )
        producer.send(topic, key=rec.key, value=rec.value, headers=rec.headers, partition=0,
                      timestamp_ms=start_ms + i)  # fmt: skip
    producer.flush()
    producer.close()
    return topic


class _Finalizer:
    """What Beam's BundleFinalizerParam gives a DoFn: ``register(callback)``."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def register(self, callback) -> None:
        self.callbacks.append(callback)


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _us_since(start: tuple[float, float], n: int) -> tuple[float, float]:
    """(wall, CPU of this process: every thread) us per record since ``start``."""
    wall, cpu = _clocks()
    return (wall - start[0]) / n * 1e6, (cpu - start[1]) / n * 1e6


def _read_path_us(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    """(a) us/record of ReadFromKafka's partition read: DoFn.process from poll to rows.

    The DoFn runs as Beam runs it (Beam's restriction tracker view, the reader's own watermark
    estimator), bundle after bundle until ``n`` records came out. A first pass connects and
    warms up; the second (timed) seeks back to offset 0. Wall time includes the broker's
    answers (on a loaded machine, its share of the CPUs); CPU time is this process's alone. Also
    the CPU time of a plain kafka-python poll loop over the same records: the floor of the read
    path while kafka-python parses the records.
    """
    from apache_beam.io.restriction_trackers import OffsetRange
    from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
    from apache_beam.utils.timestamp import MIN_TIMESTAMP

    from costream.connectors.kafka.offsets import _PartitionDescriptor
    from costream.connectors.kafka.read import _ReadPartitionFn
    from costream.connectors.kafka.restriction import _KafkaOffsetTracker, _PartitionWatermark

    cfg = ReadFromKafka(bootstrap, topic, max_records=n)._cfg
    fn = _ReadPartitionFn(cfg)
    fn.setup()
    desc = _PartitionDescriptor(topic, 0, 0, n)

    def one_pass() -> tuple[float, float]:
        got, start = 0, 0
        t0 = _clocks()
        while got < n:
            tracker = RestrictionTrackerView(
                ThreadsafeRestrictionTracker(_KafkaOffsetTracker(OffsetRange(start, n)))
            )
            watermark = _PartitionWatermark((MIN_TIMESTAMP, time.time()))
            rows = list(fn.process(desc, _Finalizer(), tracker=tracker, watermark=watermark))
            got += len(rows)
            if rows:
                start = rows[-1].value.offset + 1
        return _us_since(t0, n)

    one_pass()
    wall, cpu = one_pass()
    for r in fn._readers.values():
        r.close()
    # The floor: a plain kafka-python consumer polling the same records (its record parsing).
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_poll_records=cfg.max_records_per_bundle, fetch_max_wait_ms=20)  # fmt: skip
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    for _ in range(2):  # the first pass connects
        consumer.seek(tp, 0)
        got, t0 = 0, _clocks()
        while got < n:
            got += sum(map(len, consumer.poll(timeout_ms=cfg.poll_timeout_ms).values()))
        _, cpu_plain = _us_since(t0, n)
    consumer.close()
    return {
        "(a) ReadFromKafka process, wall": wall,
        "(a) ReadFromKafka process, CPU": cpu,
        "(a) plain kafka-python poll loop, CPU": cpu_plain,
    }


def _detections(n: int) -> list:
    labels = [f"class-{c}" for c in range(10)]
    rng = np.random.default_rng(1)
    scores = rng.random((n, 10)).astype(np.float32)
    return [
        contract.make_detection(
            f"cam-{i % N_STREAMS}",
            i // N_STREAMS,
            1_700_000_000_000 + i,
            scores[i],
            labels,
            warm=True,
            model="co_oadtr@0123abcd",
            latency_ms=1.5,
        )  # fmt: skip
        for i in range(n)
    ]


def _write_path_us(
    bootstrap: str, n: int, bundle: int, client_config: dict | None
) -> tuple[float, float]:
    """(b) us/record of WriteToKafka's process + finish_bundle for detections, bundles of ``bundle``."""
    from apache_beam.utils.timestamp import Timestamp

    from costream.connectors.kafka import WriteToKafka

    topic = f"bench-out-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    fn = WriteToKafka(bootstrap, topic, client_config=client_config)._fn
    fn.setup()
    dets = _detections(n)
    stamps = [Timestamp(micros=d.ts_ms * 1000) for d in dets]

    def run(lo: int, hi: int) -> None:
        for b in range(lo, hi, bundle):
            fn.start_bundle()
            for i in range(b, min(b + bundle, hi)):
                fn.process(dets[i], stamps[i])
            fn.finish_bundle()

    run(0, min(bundle, n))  # connect, fetch metadata
    t0 = _clocks()
    run(0, n)
    us = _us_since(t0, n)
    fn.teardown()
    admin.delete_topics([topic])
    admin.close()
    return us


def _best_us(f, n: int, repeat: int = 5) -> float:
    """Best of ``repeat`` timings of ``n`` calls of ``f``, in us per call."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def _best_encode_us(make, n: int, repeat: int = 5) -> float:
    """Best of ``repeat`` timings of ``detection_record`` of ``n`` rows ``make`` just made."""
    best = float("inf")
    for _ in range(repeat):
        dets = [make() for _ in range(n)]
        t0 = time.perf_counter()
        for d in dets:
            contract.detection_record(d)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def _cpu_paths_us(n: int) -> dict[str, float]:
    """(c) detection make, encode (detection_record) and both; (d) decode_record, in us/record."""
    from costream.transforms.decode import decode_record

    labels = [f"class-{c}" for c in range(10)]
    scores = np.random.default_rng(1).random(10).astype(np.float32)

    def make():
        return contract.make_detection("cam-7", 123, 1_700_000_000_000, scores, labels, warm=True,
                                       model="co_oadtr@0123abcd", latency_ms=1.5)  # fmt: skip

    det = contract.Detection(*make())  # a row built elsewhere (or encoded before)
    payload, ct = contract.encode_features(np.random.default_rng(0).standard_normal(64))
    rec = contract.frame_record("cam-7", 123, 1_700_000_000_000, ct, payload)
    k = min(max(n // 4, 1000), 4000)  # within the made rows make_detection remembers
    return {
        "detection make": _best_us(make, k),
        "detection encode, made row": _best_encode_us(make, k),
        "detection encode, other row": _best_us(lambda: contract.detection_record(det), k),
        "(c) detection make+encode": _best_us(lambda: contract.detection_record(make()), k),
        "(d) decode_record (features)": _best_us(
            lambda: decode_record(rec.key, rec.value, rec.headers, now_ms=0), k
        ),
    }


_OLD_PRODUCER = {"linger_ms": 0, "batch_size": 16384}
"""kafka-python's producer defaults, which WriteToKafka used before it set linger and batch size."""


def per_record(bootstrap: str, n: int, bundle: int, arms: bool) -> dict[str, float]:
    """Every --per-record measurement once, in us/record (``arms``: the settings arms too)."""
    topic = _fill_topic(bootstrap, n)
    out: dict[str, float] = {}
    try:
        out.update(_read_path_us(bootstrap, topic, n))
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.delete_topics([topic])
        admin.close()
    out["(b) WriteToKafka detections, wall"], out["(b) WriteToKafka detections, CPU"] = (
        _write_path_us(bootstrap, n, bundle, None)
    )
    if arms:
        wall, cpu = _write_path_us(bootstrap, n, bundle, _OLD_PRODUCER)
        out["(b) old producer settings, wall"], out["(b) old producer settings, CPU"] = wall, cpu
    out.update(_cpu_paths_us(n))
    return out


def _child(bootstrap: str, n: int, bundle: int, src: str | None) -> dict[str, float]:
    """per_record on the code in ``src`` (a worktree; None: this one), in a child process."""
    env = child_env(src)
    cmd = [sys.executable, os.path.abspath(__file__), "--per-record", str(n), "--bundle",
           str(bundle), "--bootstrap", bootstrap, "--repeat", "1", "--json"]  # fmt: skip
    if src is None:
        cmd.append("--arms")  # the settings arms run on this code only
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_per_record(args: argparse.Namespace) -> int:
    """--per-record: the measurements, with --before REV side by side (best of --repeat)."""
    broker = None if args.bootstrap else make_broker("tansu").start()
    bootstrap = args.bootstrap or broker.bootstrap
    src = worktree(args.before) if args.before else None
    try:
        after: list[dict[str, float]] = []
        before: list[dict[str, float]] = []
        for i in range(args.repeat):
            print(f"round {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
            if args.json:
                after.append(per_record(bootstrap, args.per_record, args.bundle, arms=args.arms))
                continue
            # Each side in a fresh child process, in alternating order: same start, same load.
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                if side == "after":
                    after.append(_child(bootstrap, args.per_record, args.bundle, None))
                elif src is not None:
                    before.append(_child(bootstrap, args.per_record, args.bundle, src))
    finally:
        if src is not None:
            remove_worktree(src)
        if broker is not None:
            broker.stop()
    best_after = {k: min(r[k] for r in after) for k in after[0]}
    if args.json:
        print(json.dumps(best_after))
        return 0
    best_before = {k: min(r[k] for r in before) for k in before[0]} if before else {}
    load = os.getloadavg()
    print()
    print(f"{args.per_record} records (64-d features, {N_STREAMS} streams), write bundles of "
          f"{args.bundle}; us/record, best of {args.repeat}; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    head = f"before ({args.before})" if args.before else "before"
    print(f"{'path':<42} {head:>16} {'after':>9} {'after/before':>13}")
    print("-" * 83)
    for k, v in best_after.items():
        b = best_before.get(k)
        cells = (f"{b:>16.1f}", f"{v / b:>13.2f}") if b else (f"{'':>16}", f"{'':>13}")
        print(f"{k:<42} {cells[0]} {v:>9.1f} {cells[1]}")
    return 0


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
    ap.add_argument("--per-record", type=int, default=0, metavar="N",
                    help="measure costream's per-record paths with N records (see above)")  # fmt: skip
    ap.add_argument("--before", default=None, metavar="REV",
                    help="with --per-record: also measure git revision REV, side by side")  # fmt: skip
    ap.add_argument("--bundle", type=int, default=256, help="with --per-record: write bundle size")
    ap.add_argument("--repeat", type=int, default=3, help="with --per-record: rounds (best of)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arms", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.per_record:
        return run_per_record(args)
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
