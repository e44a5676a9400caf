"""The features spec on a local Flink cluster vs the embedded runner, side by side in one run.

For each stream count S (default 8 and 32) and each runner, a fresh 4-partition topic gets S
synthetic feature streams at ``--fps`` frames/s each for ``--seconds`` seconds (paced, real
time), while the spec runs; then the job stops by idle time. Reported per run:

* frames/s: distinct frames over the span from the first to the last model step (a frame's
  capture time plus its latency); with ``--fps`` above what a runner sustains, its capacity;
* latency p50 / p99: the detection's ``latency_ms`` (Kafka append to the model step);
* Flink only: the last completed checkpoint's duration and size, and its size per stream.

``--long-minutes M`` then runs S=8 on Flink for M minutes and samples the checkpoint size every
30 s, to see whether it grows (the unbounded-SDF-checkpoint issue, apache/beam#19637, fixed by
#39191 after Beam 2.62). A plot of that series goes to ``out/bench_flink_checkpoints.png``.

    .venv/bin/python benchmarks/bench_flink.py [--streams 8 32] [--seconds 20] [--long-minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from costream.connectors import contract
from costream.connectors.broker import EmbeddedBroker
from costream.pipelines.flink import FlinkCluster, Ports

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "pipelines" / "specs" / "features.yaml"


def feed(bootstrap: str, topic: str, streams: int, fps: float, seconds: float) -> int:
    """Publish ``streams`` feature streams at ``fps`` each, paced in real time; returns frames."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64)).astype(np.float32)
    n = int(fps * seconds)
    t0 = time.time()
    for i in range(n):
        delay = t0 + i / fps - time.time()
        if delay > 0:
            time.sleep(delay)
        for s in range(streams):
            payload, ct = contract.encode_features(x[(i + s) % 64])
            r = contract.frame_record(f"s{s}", i, int(time.time() * 1000), ct, payload)
            producer.send(topic, key=r.key, value=r.value, headers=r.headers)
    producer.flush()
    producer.close()
    return n * streams


def read_detections(bootstrap: str, topic: str) -> list[tuple[int, dict]]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000)
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    out = [(m.timestamp, json.loads(m.value)) for m in c]
    c.close()
    return out


def topics_and_env(broker, cluster, prefix: str) -> tuple[str, str, dict[str, str]]:
    """Fresh input (4 partitions), output and dead-letter topics, and the spec's environment."""
    t_in, t_out, t_dlq = (f"{prefix}-{p}-{uuid.uuid4().hex[:8]}" for p in ("in", "out", "dlq"))
    broker.create_topics([t_in], partitions=4)
    broker.create_topics([t_out, t_dlq], partitions=1)
    env = {
        **os.environ,
        "COSTREAM_BOOTSTRAP": broker.bootstrap,
        "COSTREAM_INPUT_TOPIC": t_in,
        "COSTREAM_OUTPUT_TOPIC": t_out,
        "COSTREAM_DEAD_LETTER_TOPIC": t_dlq,
        "COSTREAM_GROUP_ID": f"g-{t_in}",
        "COSTREAM_FLINK_DIR": str(cluster.work_dir),
    }
    return t_in, t_out, env


def one_run(
    broker,
    cluster,
    runner: str,
    streams: int,
    fps: float,
    seconds: float,
    batch: bool = False,
    parallelism: int = 2,
    shards: int = 4,
) -> dict:
    t_in, t_out, env = topics_and_env(broker, cluster, "bench")
    env["COSTREAM_BATCH_STREAMS"] = "true" if batch else "false"
    env["COSTREAM_SHARDS"] = str(shards if runner == "flink" else 1)
    cmd = [sys.executable, "-m", "costream.pipelines.cli", "run", str(SPEC), "--until-idle", "10"]
    if runner == "flink":
        cmd += ["--runner", "FlinkRunner", f"--flink_master={cluster.flink_master}"]
        cmd += [f"--parallelism={parallelism}"]
    before = {j["id"] for j in cluster.jobs()}
    log = open(cluster.work_dir / "log" / f"bench-{runner}-{streams}.out", "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    job = None
    if runner == "flink":  # feed once the job runs (submission takes ~20 s)
        while job is None and proc.poll() is None:
            job = next((j["id"] for j in cluster.jobs() if j["id"] not in before), None)
            time.sleep(0.5)
        time.sleep(8.0)
    else:
        time.sleep(8.0)
    sent = feed(broker.bootstrap, t_in, streams, fps, seconds)
    cp = None
    if job is not None:
        try:
            cp = cluster.checkpoints(job)["latest"]["completed"]
        except Exception:  # reported as missing
            cp = None
    proc.wait(timeout=600)
    log.close()
    dets = read_detections(broker.bootstrap, t_out)
    unique = {(d["stream_id"], d["frame_index"]) for _, d in dets}
    lat = np.array([d["latency_ms"] for _, d in dets])
    # when each frame was stepped: its capture time (= produce time here) + its latency
    done = np.array([d["ts_ms"] + d["latency_ms"] for _, d in dets], dtype=float)
    span = (done.max() - done.min()) / 1000 if len(done) > 1 else float("nan")
    return {
        "runner": runner + ("+batch" if batch else ""),
        "streams": streams,
        "sent": sent,
        "detections": len(dets),
        "unique": len(unique),
        "fps": len(unique) / span if span > 0 else float("nan"),
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "cp_ms": None if not cp else cp["end_to_end_duration"],
        "cp_bytes": None if not cp else cp.get("checkpointed_size", cp.get("state_size")),
    }


def long_run(broker, cluster, minutes: float, out: Path) -> list[tuple[float, int]]:
    """S=8 at 10 fps on Flink for ``minutes``; checkpoint size every 30 s."""
    t_in, t_out, env = topics_and_env(broker, cluster, "long")
    cmd = [sys.executable, "-m", "costream.pipelines.cli", "run", str(SPEC), "--until-idle", "10"]
    cmd += ["--runner", "FlinkRunner", f"--flink_master={cluster.flink_master}"]
    before = {j["id"] for j in cluster.jobs()}
    log = open(cluster.work_dir / "log" / "bench-long.out", "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    job = None
    while job is None:
        job = next((j["id"] for j in cluster.jobs() if j["id"] not in before), None)
        time.sleep(0.5)
    feeder = threading.Thread(
        target=feed, args=(broker.bootstrap, t_in, 8, 10.0, minutes * 60), daemon=True
    )
    feeder.start()
    series: list[tuple[float, int]] = []
    t0 = time.time()
    while feeder.is_alive():
        time.sleep(30)
        cp = cluster.checkpoints(job)["latest"]["completed"]
        if cp:
            size = int(cp.get("checkpointed_size", cp.get("state_size", 0)))
            series.append(((time.time() - t0) / 60, size))
            print(f"  {series[-1][0]:5.1f} min  checkpoint {size / 1e3:8.1f} kB", flush=True)
    proc.wait(timeout=600)
    log.close()
    if series:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([m for m, _ in series], [b / 1e3 for _, b in series], marker="o")
        ax.set_xlabel("minutes (8 streams x 10 frames/s)")
        ax.set_ylabel("last checkpoint (kB)")
        ax.set_title("Flink checkpoint size over a long run")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        print(f"plot: {out}")
    return series


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--fps", type=float, default=10.0, help="frames/s per stream")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of paced input per run")
    ap.add_argument("--long-minutes", type=float, default=0.0, help="then a long Flink run")
    ap.add_argument("--batching", choices=["off", "on", "both"], default="off")
    ap.add_argument("--parallelism", type=int, default=2, help="Flink parallelism")
    ap.add_argument("--shards", type=int, default=4, help="batched arm on Flink: shard keys")
    ap.add_argument("--runners", nargs="+", default=["embedded", "flink"])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_flink_checkpoints.png")
    args = ap.parse_args()
    arms = {"off": [False], "on": [True], "both": [False, True]}[args.batching]
    work = Path(tempfile.mkdtemp(prefix="costream-bench-flink-"))
    print(f"starting Flink in {work} ...", flush=True)
    cluster = FlinkCluster(work, ports=Ports(0, 0, 0, 0, 0, 0), cwd=ROOT).up()
    rows = []
    try:
        with EmbeddedBroker() as broker:
            for s in args.streams:
                for runner in args.runners:
                    for batch in arms:
                        print(f"S={s} {runner}{' batched' if batch else ''} ...", flush=True)
                        rows.append(
                            one_run(
                                broker,
                                cluster,
                                runner,
                                s,
                                args.fps,
                                args.seconds,
                                batch,
                                args.parallelism,
                                args.shards,
                            )  # fmt: skip
                        )
            print(f"parallelism {args.parallelism} on Flink; load average {os.getloadavg()[0]:.2f}")
            hdr = "runner          S  sent  unique  dupes  frames/s  p50 ms  p99 ms  ckpt ms  ckpt kB  B/stream"
            print(hdr)
            for r in rows:
                cp_kb = "-" if r["cp_bytes"] is None else f"{r['cp_bytes'] / 1e3:7.1f}"
                per = "-" if r["cp_bytes"] is None else f"{r['cp_bytes'] / r['streams']:8.0f}"
                cp_ms = "-" if r["cp_ms"] is None else f"{r['cp_ms']:7d}"
                print(
                    f"{r['runner']:<14} {r['streams']:>3} {r['sent']:>5} {r['unique']:>7} "
                    f"{r['detections'] - r['unique']:>6} {r['fps']:>9.1f} {r['p50']:>7.0f} "
                    f"{r['p99']:>7.0f} {cp_ms:>8} {cp_kb:>8} {per:>9}"
                )
            by = {(r["runner"], r["streams"]): r for r in rows}
            for name in dict.fromkeys(r["runner"] for r in rows):
                S = sorted(s for n, s in by if n == name)
                if len(S) > 1:
                    a, b = by[(name, S[0])], by[(name, S[-1])]
                    print(f"{name}: S={S[-1]} / S={S[0]} frames/s {b['fps'] / a['fps']:.2f}x")
            for s in args.streams:
                for tag in ("", "+batch"):
                    e, f = by.get((f"embedded{tag}", s)), by.get((f"flink{tag}", s))
                    if e and f:
                        print(
                            f"S={s}{tag}: flink/embedded frames/s {f['fps'] / e['fps']:.2f}x, "
                            f"p50 latency {f['p50'] / max(e['p50'], 1e-9):.2f}x"
                        )
            if args.long_minutes > 0:
                print(f"long run: {args.long_minutes:g} min on Flink, S=8")
                long_run(broker, cluster, args.long_minutes, args.out)
    finally:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
