"""End-to-end streaming on the embedded runner: frames/s, p50/p99 latency, where per-frame time goes.

Specs ``features`` (64-d feature records: model cost only) and ``video`` (320x240 JPEG
frames through the ``resnet18_small`` backbone), each with S in {1, 8, 32} concurrent streams.
One embedded tansu broker; per run fresh topics, the spec on ``run_spec(..., "DirectRunner")``
(the in-process FnApiRunner) in this process, and a driver in a child process that produces
frames and consumes detections, so its work does not compete for this process's GIL.

Each (spec, S) runs twice, after warm-up frames on separate streams (model loading and pipeline
start-up excluded):

1. backlog: S x F frames sent as fast as the producer goes. frames/s = frames / (first send ->
   receipt of the last detection): the capacity, reading, decoding and writing included.
2. paced: the same S streams together at ``--load`` (default 0.5) x that capacity, frames of the
   streams evenly staggered, for ``--paced-s`` seconds; latency percentiles over all its frames.

Latency, two definitions:

* ``pipeline``: the detection's ``latency_ms`` field, from the record's decode (``arrival_ms``,
  stamped in ``DecodeFrames`` right after ``ReadFromKafka``) to the detection built in
  ``ContinualInferenceFn``. Excludes the broker, the reader's poll and ``WriteToKafka``.
* ``e2e``: the driver stamps ``costream.ts_ms`` with the wall clock as it sends a frame; e2e =
  the driver's receipt of the detection - ``ts_ms``: producer, broker, polls, every stage,
  ``WriteToKafka``'s flush at bundle end and the consume, all included.

Time split (Beam distributions of the backlog run, ``ContinualInferenceFn`` docstring): of the
inference DoFn's per-frame time, the share in state read + write + (de)serialisation vs in the
model step; and, per frame at capacity (1e6 / frames/s us), the shares of the backbone
(``RunInference`` batch latency / inferences) and of the whole inference DoFn; the rest is the
runner, Kafka I/O and decoding. The backlog line also gives the run's full garbage collections
and their time, the pipeline's start-up (imports, construction, ``setup``) included (the pipeline
runs in this process, so each one stalls it; ``GcClock``).

    .venv/bin/python benchmarks/bench_e2e.py            # ~10 min on 2 cores; out/bench_e2e.{png,json}
    .venv/bin/python benchmarks/bench_e2e.py --quick    # fewer frames, S in {1, 8}
    .venv/bin/python benchmarks/bench_e2e.py --specs video --streams 32 --before REV  # vs REV
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from revisions import child_env, remove_worktree, use_source, worktree

# the checkout measured: this one, or with --before the old revision's worktree (in a child)
ROOT = use_source()
SPECS = {
    "features": ("features.yaml", "demo_model.safetensors"),
    "video": ("video.yaml", "demo_video_model.safetensors"),
}
VIDEO_SIZE = (320, 240)  # the demo video model's training frames
WARMUP_EVERY_S = 0.25
STALL_S = 60.0


@dataclass
class Plan:
    """One run's workload, as the driver process sees it."""

    bootstrap: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    streams: int
    frames: int  # per stream
    partitions: int
    rate: float | None  # frames/s of all streams together; None: a backlog, as fast as possible


def make_payloads(spec: str, distinct: int = 64) -> tuple[str, list[bytes]]:
    """(content type, payloads) cycled over frames: random 64-d features or synthetic JPEGs."""
    from costream.connectors import contract

    if spec == "features":
        rng = np.random.default_rng(0)
        encoded = [contract.encode_features(rng.standard_normal(64)) for _ in range(distinct)]
        return encoded[0][1], [payload for payload, _ in encoded]
    from costream.connectors.synthetic import iter_synthetic_video

    frames = iter_synthetic_video(distinct, VIDEO_SIZE, 10.0, seed=0)
    return contract.CT_JPEG, [contract.encode_jpeg(rgb, 90) for _, _, rgb, _ in frames]


# --- the driver (child process): produce frames, consume detections ------------------------


def drive(plan: Plan, content_type: str, payloads: list[bytes], results: Any) -> None:
    """Warm up, send the plan's frames, collect every detection; put a dict on ``results``."""
    try:
        results.put(_drive(plan, content_type, payloads))
    except BaseException as err:  # reported to the parent, which owns the pipeline
        results.put({"error": f"{type(err).__name__}: {err}"})


def _drive(plan: Plan, content_type: str, payloads: list[bytes]) -> dict[str, Any]:
    import threading

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from costream.connectors import contract

    producer = KafkaProducer(
        bootstrap_servers=plan.bootstrap,
        linger_ms=0 if plan.rate else 5,
        batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    consumer = KafkaConsumer(
        bootstrap_servers=plan.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,  # receipt times are latency samples: do not let fetches linger
    )
    consumer.assign(
        [TopicPartition(plan.output_topic, p) for p in range(plan.partitions)]
        + [TopicPartition(plan.dead_letter_topic, 0)]
    )

    def send(stream: str, partition: int, index: int) -> None:
        rec = contract.frame_record(
            stream, index, int(time.time() * 1000), content_type, payloads[index % len(payloads)]
        )
        producer.send(
            plan.input_topic, key=rec.key, value=rec.value, headers=rec.headers, partition=partition
        )

    # Warm-up: one stream per partition, a frame every WARMUP_EVERY_S until each has come back,
    # so models are loaded and no partition of the reader goes idle before the measured frames.
    warm: set[str] = set()
    deadline, k, next_send = time.time() + 300, 0, 0.0
    while len(warm) < plan.partitions:
        if time.time() > deadline:
            raise TimeoutError("no warm-up detections within 300 s; is the pipeline running?")
        if time.time() >= next_send:
            for p in range(plan.partitions):
                send(f"warmup-{p}", p, k)
            producer.flush()
            k, next_send = k + 1, time.time() + WARMUP_EVERY_S
        for msgs in consumer.poll(timeout_ms=20).values():
            warm.update(m.key.decode() for m in msgs if m.topic == plan.output_topic)

    order = [(i, s) for i in range(plan.frames) for s in range(plan.streams)]
    sent: dict[str, float] = {}

    def produce() -> None:
        t0 = sent["start"] = time.time()
        for j, (i, s) in enumerate(order):
            if plan.rate:
                delay = t0 + j / plan.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            send(f"s{s:03d}", s % plan.partitions, i)
        producer.flush()
        sent["end"] = time.time()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    rows: list[tuple[str, int, int, float, float]] = []
    dead, expected, last_new = 0, len(order), time.time()
    while len(rows) + dead < expected:
        if time.time() - last_new > STALL_S:
            raise TimeoutError(
                f"{len(rows)} of {expected} detections, then none for {STALL_S:g} s."
            )
        for msgs in consumer.poll(timeout_ms=20).values():
            now_ms = time.time() * 1000
            for m in msgs:
                if m.topic == plan.dead_letter_topic:
                    dead += 1
                    continue
                d = json.loads(m.value)
                if d["stream_id"].startswith("warmup-"):
                    continue
                rows.append((d["stream_id"], d["frame_index"], d["ts_ms"], d["latency_ms"], now_ms))
                last_new = time.time()
    thread.join()
    producer.close()
    consumer.close()
    return {"rows": rows, "dead": dead, "send_start": sent["start"], "send_end": sent["end"]}


# --- one run: fresh topics, the spec in this process, the driver beside it -----------------


def run_once(
    broker: Any,
    spec: str,
    plan_args: dict[str, Any],
    payloads: tuple,
    idle_s: float,
    weights: str | None = None,
):
    """Run ``spec`` against a driver process; returns (driver result, Beam metrics).

    ``weights``: another model file than the spec's demo model (same input size).
    """
    from costream.pipelines.runner import run_spec

    tag = uuid.uuid4().hex[:8]
    topics = {"input": f"in-{tag}", "output": f"det-{tag}", "dead": f"dead-{tag}"}
    broker.create_topics([topics["input"], topics["output"]], partitions=plan_args["partitions"])
    broker.create_topics([topics["dead"]], partitions=1)
    plan = Plan(broker.bootstrap, topics["input"], topics["output"], topics["dead"], **plan_args)
    spec_file, demo = SPECS[spec]
    os.environ.update(
        COSTREAM_BOOTSTRAP=broker.bootstrap,
        COSTREAM_INPUT_TOPIC=plan.input_topic,
        COSTREAM_OUTPUT_TOPIC=plan.output_topic,
        COSTREAM_DEAD_LETTER_TOPIC=plan.dead_letter_topic,
        COSTREAM_WEIGHTS=weights or str(ROOT / "pipelines" / "assets" / demo),
    )
    ctx = mp.get_context("spawn")  # a clean child: no torch or Beam threads forked along
    results = ctx.Queue()
    driver = ctx.Process(target=drive, args=(plan, *payloads, results), daemon=True)
    driver.start()
    try:
        spec_path = ROOT / "pipelines" / "specs" / spec_file
        result = run_spec(spec_path, "DirectRunner", until_idle_s=idle_s)
        out = wait_for_driver(driver, results)
    finally:
        if driver.is_alive():
            driver.join(timeout=5)
        if driver.is_alive():
            driver.terminate()
        broker.delete_topics(topics.values())
    if "error" in out:
        raise RuntimeError(f"driver of {spec} S={plan.streams}: {out['error']}")
    return out, metric_sums(result)


def wait_for_driver(driver: Any, results: Any) -> dict[str, Any]:
    """The driver's result; raises if it ended without one (it gives up after STALL_S itself)."""
    deadline = time.time() + STALL_S + 30
    while True:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            if not driver.is_alive() or time.time() > deadline:
                raise RuntimeError(
                    f"The driver process ended (exit code {driver.exitcode}) without a result."
                ) from None


def metric_sums(result: Any) -> dict[str, dict[str, float]]:
    """``{"namespace/name": {"sum", "count"}}`` of every counter and distribution, all steps."""
    got: dict[str, dict[str, float]] = {}
    query = result.metrics().query()
    for kind in ("counters", "distributions"):
        for m in query[kind]:
            key = f"{m.key.metric.namespace}/{m.key.metric.name}"
            v = m.committed if m.committed is not None else m.attempted
            entry = got.setdefault(key, {"sum": 0.0, "count": 0.0})
            if kind == "counters":
                entry["sum"] += v
                entry["count"] += v
            else:
                entry["sum"] += v.sum
                entry["count"] += v.count
    return got


def check_complete(out: dict[str, Any], streams: int, frames: int) -> str:
    """'' when every stream has exactly frames 0..F-1 and nothing was dead-lettered, else why."""
    seen: dict[str, set[int]] = {}
    for stream, index, *_ in out["rows"]:
        seen.setdefault(stream, set()).add(index)
    full = set(range(frames))
    bad = [s for s in (f"s{i:03d}" for i in range(streams)) if seen.get(s) != full]
    problems = []
    if out["dead"]:
        problems.append(f"{out['dead']} dead letters")
    if bad or len(out["rows"]) != streams * frames:
        problems.append(f"{len(out['rows'])} detections for {streams * frames} frames")
    return "; ".join(problems)


def time_split(m: dict[str, dict[str, float]], fps: float) -> dict[str, float]:
    """Per-frame means (us) and shares (%) from a run's Beam metrics (module docstring)."""

    def total(name: str) -> float:
        return m.get(name, {"sum": 0.0})["sum"]

    def mean(name: str) -> float:
        count = m.get(name, {"count": 0.0})["count"]
        return total(name) / count if count else 0.0

    frame = total("costream/frame_us")
    state = total("costream/state_read_us") + total("costream/state_write_us")
    inferences = total("costream.features/num_inferences")
    backbone = total("costream.features/inference_batch_latency_micro_secs")
    backbone_us = backbone / inferences if inferences else 0.0
    wall_us = 1e6 / fps
    return {
        "wall_us": wall_us,
        "backbone_us": backbone_us,
        "backbone_batch": mean("costream.features/inference_request_batch_size"),
        "dofn_us": mean("costream/frame_us"),
        "state_read_us": mean("costream/state_read_us"),
        "state_write_us": mean("costream/state_write_us"),
        "serde_us": mean("costream/serde_us"),
        "model_us": mean("costream/model_us"),
        "batch_frames": mean("costream/batch_frames"),
        "state_serde_pct": 100 * (state + total("costream/serde_us")) / frame if frame else 0.0,
        "model_pct": 100 * total("costream/model_us") / frame if frame else 0.0,
        "backbone_wall_pct": 100 * backbone_us / wall_us,
        "dofn_wall_pct": 100 * mean("costream/frame_us") / wall_us,
    }


def isolated_step(spec: str, streams: int, frames: int = 600) -> dict[str, float]:
    """The stepper alone (no Beam, no Kafka) on S interleaved streams: mean serde and model us.

    Side by side with the same quantities measured inside the pipeline, this shows how much
    the surroundings (other threads, the broker, the driver) slow the step itself.
    """
    import torch

    from costream.transforms.stepper import load_stepper

    torch.set_num_threads(1)  # as ContinualInferenceFn.setup
    stepper = load_stepper(str(ROOT / "pipelines" / "assets" / SPECS[spec][1]))
    x = np.random.default_rng(0).standard_normal((64, stepper.d_in)).astype(np.float32)
    store: dict[int, bytes | None] = {}
    times = []
    for j in range(max(frames, 4 * streams)):
        s, i = j % streams, j // streams
        store[s], r = stepper.process(store.get(s), f"s{s}", i, i, x[j % 64], now_ms=0)
        times.append((r.decode_us + r.encode_us, r.model_us))
    serde, model = np.mean(times[len(times) // 4 :], axis=0)  # the first quarter warms up
    return {"serde_us": float(serde), "model_us": float(model)}


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """(p50, p99)."""
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def problem_note(out: dict[str, Any], streams: int, frames: int) -> str:
    problem = check_complete(out, streams, frames)
    return f"  !! {problem}" if problem else ""


class GcClock:
    """Time spent in CPython's full (generation 2) collections in this process, as it runs.

    The pipeline runs in this process (the embedded runner), so a full collection is a stall
    of the pipeline thread; ``transforms/gc_tuning.py`` is what keeps them rare.
    """

    def __init__(self) -> None:
        self.count, self.seconds, self._start = 0, 0.0, 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start

    def snapshot(self) -> tuple[int, float]:
        return self.count, self.seconds


GC_CLOCK = GcClock()


# --- one configuration: backlog, then paced ------------------------------------------------


def run_config(
    broker: Any, spec: str, S: int, payloads: tuple, args: argparse.Namespace, batch: bool = False
) -> dict[str, Any]:
    """Backlog run (capacity, time split), then a paced run at ``args.load`` x capacity.

    ``batch``: the spec's ContinualInference batches streams (``COSTREAM_BATCH_STREAMS``).
    """
    os.environ["COSTREAM_BATCH_STREAMS"] = "true" if batch else "false"
    label = f"{spec}+batch" if batch else spec
    P = min(S, args.partitions)
    F = max(1, args.backlog_frames[spec] // S)
    plan = {"streams": S, "frames": F, "partitions": P, "rate": None}
    gc_before = GC_CLOCK.snapshot()
    backlog, metrics = run_once(broker, spec, plan, payloads, args.idle_s)
    gc_count, gc_s = (b - a for a, b in zip(gc_before, GC_CLOCK.snapshot(), strict=True))
    last_received = max(r[4] for r in backlog["rows"]) / 1000
    fps = len(backlog["rows"]) / (last_received - backlog["send_start"])
    producer_fps = S * F / (backlog["send_end"] - backlog["send_start"])
    split = time_split(metrics, fps)
    alone = isolated_step(spec, S)
    print(
        f"{label:>14} S={S:<3} backlog {S * F} frames: {fps:.0f} frames/s (the producer alone "
        f"{producer_fps:.0f}/s); inference {split['dofn_us']:.0f} us/frame: state+serde "
        f"{split['state_serde_pct']:.0f}%, model {split['model_pct']:.0f}% "
        f"(model {split['model_us']:.0f} us, alone {alone['model_us']:.0f} us)"
        + (f"; {split['batch_frames']:.1f} frames per batch" if batch else "")
        + f"; {gc_count} full GCs ({gc_s * 1000:.0f} ms, start-up included)"
        + problem_note(backlog, S, F),
        flush=True,
    )
    rate = args.paced_fps or args.load * fps
    Fp = max(2, round(args.paced_s * rate / S))
    plan = {"streams": S, "frames": Fp, "partitions": P, "rate": rate}
    paced, paced_metrics = run_once(broker, spec, plan, payloads, args.idle_s)
    lat = percentiles(np.array([r[3] for r in paced["rows"]]))
    e2e = percentiles(np.array([r[4] - r[2] for r in paced["rows"]]))
    print(
        f"{label:>14} S={S:<3} paced {S * Fp} frames at {rate:.0f}/s ({rate / S:.1f}/s per "
        f"stream): latency p50 {lat[0]:.0f} ms p99 {lat[1]:.0f} ms, e2e p50 {e2e[0]:.0f} ms "
        f"p99 {e2e[1]:.0f} ms" + problem_note(paced, S, Fp),
        flush=True,
    )
    problems = filter(None, [check_complete(backlog, S, F), check_complete(paced, S, Fp)])
    return {
        "spec": label,
        "batch": batch,
        "streams": S,
        "partitions": P,
        "backlog_frames": S * F,
        "frames_per_s": fps,
        "producer_frames_per_s": producer_fps,
        "paced_frames": S * Fp,
        "paced_rate": rate,
        "per_stream_fps": rate / S,
        "latency_ms_p50": lat[0],
        "latency_ms_p99": lat[1],
        "e2e_ms_p50": e2e[0],
        "e2e_ms_p99": e2e[1],
        "split": split,
        "gc_full_collections": gc_count,
        "gc_full_s": gc_s,
        "paced_split": time_split(paced_metrics, rate),
        "alone": alone,
        "problems": "; ".join(problems),
    }


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="S in {1, 8}, fewer frames, 4 s paced")
    ap.add_argument("--specs", nargs="+", choices=sorted(SPECS), default=["features", "video"])
    ap.add_argument("--streams", type=int, nargs="+", help="default 1 8 32 (quick: 1 8)")
    ap.add_argument(
        "--features-frames", type=int, help="backlog frames per run, features (8000; quick 1500)"
    )
    ap.add_argument(
        "--video-frames", type=int, help="backlog frames per run, video (3200; quick 480)"
    )
    ap.add_argument("--paced-s", type=float, help="seconds of paced input (default 15; quick 4)")
    ap.add_argument("--load", type=float, default=0.5, help="paced rate / backlog frames/s")
    ap.add_argument(
        "--paced-fps",
        type=float,
        help="pace every arm at this many frames/s instead (compare latencies at one rate)",
    )
    ap.add_argument("--partitions", type=int, default=4, help="topic partitions: min(S, this)")
    ap.add_argument("--idle-s", type=float, default=3.0, help="spec stops after this idle time")
    ap.add_argument(
        "--batching",
        choices=["off", "on", "both"],
        default="both",
        help="ContinualInference one stream per step (off), batched across streams (on), or "
        "both side by side (default)",
    )
    ap.add_argument("--shards", type=int, help="batched arm: shard keys (COSTREAM_SHARDS)")
    ap.add_argument(
        "--before",
        metavar="REV",
        help="also run every configuration on revision REV (a git worktree), alternating "
        "with this checkout's, each side in a fresh child process; prints after / before",
    )
    ap.add_argument("--rows-json", type=Path, help=argparse.SUPPRESS)  # a --before child's rows
    ap.add_argument("--out", type=Path, default=Path("out"))
    args = ap.parse_args()
    if args.shards:
        os.environ["COSTREAM_SHARDS"] = str(args.shards)
    if not 0 < args.load < 1:
        ap.error(f"--load is a fraction of the capacity in (0, 1); got {args.load}.")
    streams = args.streams or ([1, 8] if args.quick else [1, 8, 32])
    args.backlog_frames = {
        "features": args.features_frames or (1500 if args.quick else 8000),
        "video": args.video_frames or (480 if args.quick else 3200),
    }
    args.paced_s = args.paced_s or (4.0 if args.quick else 15.0)
    logging.basicConfig(level=logging.ERROR)  # Beam's optional-module warnings

    from costream.connectors.broker import EmbeddedBroker

    rows: list[dict[str, Any]] = []
    started = time.time()
    arms = {"off": [False], "on": [True], "both": [False, True]}[args.batching]
    if args.before:
        rows = run_sides(args, streams, arms)
    else:
        with EmbeddedBroker() as broker:
            print(
                f"broker {broker.bootstrap}; {os.cpu_count()} CPUs; paced at "
                + (
                    f"{args.paced_fps:g} frames/s"
                    if args.paced_fps
                    else f"{args.load:g} x capacity"
                )
                + f"; partitions min(S, {args.partitions}); runs stop {args.idle_s:g} s "
                f"idle; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            for spec in args.specs:
                payloads = make_payloads(spec)
                for S in streams:
                    for batch in arms:
                        rows.append(run_config(broker, spec, S, payloads, args, batch))
    if args.rows_json:
        args.rows_json.write_text(json.dumps(rows))
        return 0
    print(f"\n{len(rows)} configurations in {time.time() - started:.0f} s")
    print_tables(rows, args.load)
    print_ratios(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "load": args.load,
        "partitions": args.partitions,
        "idle_s": args.idle_s,
        "paced_s": args.paced_s,
        "video_size": VIDEO_SIZE,
    }
    out_json = args.out / "bench_e2e.json"
    out_json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    plot(rows, args.load, args.out / "bench_e2e.png")
    print(f"results: {out_json}, plot: {args.out / 'bench_e2e.png'}")
    return 1 if any(r["problems"] for r in rows) else 0


def run_sides(args: argparse.Namespace, streams: list[int], arms: list[bool]) -> list[dict]:
    """--before: every configuration on REV and on this checkout, alternating, in children."""
    import tempfile

    src = worktree(args.before)
    rows: list[dict[str, Any]] = []
    try:
        configs = [(spec, S, batch) for spec in args.specs for S in streams for batch in arms]
        for i, (spec, S, batch) in enumerate(configs):
            print(f"\n[{i + 1}/{len(configs)}] {spec} S={S}, load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "rows.json"
                    cmd = [sys.executable, os.path.abspath(__file__), "--specs", spec,
                           "--streams", str(S), "--batching", "on" if batch else "off",
                           "--rows-json", str(out), "--out", tmp,
                           "--load", str(args.load), "--partitions", str(args.partitions),
                           "--paced-fps", str(args.paced_fps or 0),
                           "--idle-s", str(args.idle_s), "--paced-s", str(args.paced_s),
                           "--features-frames", str(args.backlog_frames["features"]),
                           "--video-frames", str(args.backlog_frames["video"])]  # fmt: skip
                    if args.shards:
                        cmd += ["--shards", str(args.shards)]
                    env = child_env(src if side == "before" else None)
                    subprocess.run(cmd, env=env, check=True)
                    got = json.loads(out.read_text())
                for r in got:
                    if side == "before":
                        r["spec"] = f"{r['spec']}@{args.before}"
                rows += got
    finally:
        remove_worktree(src)
    return rows


def print_ratios(rows: list[dict[str, Any]]) -> None:
    """Capacity at the most streams over the same arm's 1-stream capacity, and batched over not."""
    print("\nratios (same run)")
    by = {(r["spec"], r["streams"]): r["frames_per_s"] for r in rows}
    for label in dict.fromkeys(r["spec"] for r in rows):
        S = sorted(s for lab, s in by if lab == label)
        if len(S) > 1 and S[0] == 1:
            print(
                f"{label:>14}: S={S[-1]} / S=1 = {by[(label, S[-1])] / by[(label, 1)]:.2f}x "
                f"({by[(label, S[-1])]:.0f} / {by[(label, 1)]:.0f} frames/s)"
            )
    for (label, S), fps in by.items():
        if "@" in label and (label.split("@")[0], S) in by:
            after = by[(label.split("@")[0], S)]
            print(f"{label.split('@')[0]:>14} S={S}: this checkout / {label} = {after / fps:.2f}x")
    for (label, S), fps in by.items():
        if not label.endswith("+batch"):
            continue
        one = label.removesuffix("+batch")
        if (one, S) in by:
            print(f"{label:>14} S={S}: batched / one stream per step = {fps / by[(one, S)]:.2f}x")
        if S > 1 and (one, 1) in by:  # capacity grown with streams, batched vs one stream S=1
            print(
                f"{label:>14} S={S} / {one} S=1 (one stream per step) = "
                f"{fps / by[(one, 1)]:.2f}x ({fps:.0f} / {by[(one, 1)]:.0f} frames/s)"
            )


def print_tables(rows: list[dict[str, Any]], load: float) -> None:
    print(f"\nthroughput (backlog) and latency (paced at {load:g} x that rate), ms")
    head = (
        f"{'spec':<14} {'S':>3} {'P':>2} {'frames/s':>9} {'paced/s':>8} {'per stream':>10} "
        f"{'lat p50':>8} {'lat p99':>8} {'e2e p50':>8} {'e2e p99':>8}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['spec']:<14} {r['streams']:>3} {r['partitions']:>2} {r['frames_per_s']:>9.0f} "
            f"{r['paced_rate']:>8.0f} {r['per_stream_fps']:>10.1f} {r['latency_ms_p50']:>8.0f} "
            f"{r['latency_ms_p99']:>8.0f} {r['e2e_ms_p50']:>8.0f} {r['e2e_ms_p99']:>8.0f}"
            + (f"  !! {r['problems']}" if r["problems"] else "")
        )
    print("lat: the detection's latency_ms (decode -> detection); e2e: send -> detection received")

    print("\nwhere per-frame time goes (backlog runs), us per frame and %")
    head = (
        f"{'spec':<14} {'S':>3} {'wall':>6} {'backbone':>8} {'infer':>6} {'st r/w':>6} "
        f"{'serde':>6} {'model':>6} {'serde*':>6} {'model*':>6} | {'st+serde':>8} {'model':>6} "
        f"| {'backbone':>8} {'infer':>6}"
    )
    bar1, bar2 = head.index("|"), head.rindex("|")
    print(
        f"{'':<{bar1 + 1}}{'% of infer':^{bar2 - bar1 - 1}} {'% of wall':^{len(head) - bar2 - 1}}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        s, a = r["split"], r["alone"]
        print(
            f"{r['spec']:<14} {r['streams']:>3} {s['wall_us']:>6.0f} {s['backbone_us']:>8.0f} "
            f"{s['dofn_us']:>6.0f} {s['state_read_us'] + s['state_write_us']:>6.1f} "
            f"{s['serde_us']:>6.0f} {s['model_us']:>6.0f} {a['serde_us']:>6.0f} "
            f"{a['model_us']:>6.0f} | {s['state_serde_pct']:>7.1f}% {s['model_pct']:>5.1f}% "
            f"| {s['backbone_wall_pct']:>7.1f}% {s['dofn_wall_pct']:>5.1f}%"
        )
    print(
        "wall = 1e6 / frames/s; backbone = RunInference batch latency / frames; infer = "
        "ContinualInferenceFn\nper frame: st r/w = state read + write, serde = state bytes <-> "
        "tensors, model = step + softmax;\n* = the stepper alone, no Beam or Kafka. The rest of "
        "wall: the runner, Kafka I/O, decoding."
    )


def plot(rows: list[dict[str, Any]], load: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fps, ax_lat, ax_split) = plt.subplots(1, 3, figsize=(16, 5))
    ticks = sorted({r["streams"] for r in rows})
    labels_ = list(dict.fromkeys(r["spec"] for r in rows))
    for spec, color in zip(labels_, (f"C{i}" for i in range(10))):
        sel = [r for r in rows if r["spec"] == spec]
        if not sel:
            continue
        S = [r["streams"] for r in sel]
        ax_fps.plot(S, [r["frames_per_s"] for r in sel], "o-", color=color, label=spec)
        ax_lat.plot(S, [r["e2e_ms_p50"] for r in sel], "o-", color=color, label=f"{spec} e2e p50")
        ax_lat.plot(S, [r["e2e_ms_p99"] for r in sel], "s--", color=color, label=f"{spec} e2e p99")
        lat = [r["latency_ms_p50"] for r in sel]
        ax_lat.plot(S, lat, "^:", color=color, label=f"{spec} pipeline p50")
    ax_fps.set(xscale="log", xlabel="concurrent streams S", ylabel="frames/s", title="capacity")
    ax_lat.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent streams S",
        ylabel="ms",
        title=f"latency at {load:g} x capacity",
    )
    for ax in (ax_fps, ax_lat):
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    ax_fps.legend(fontsize=7)
    ax_fps.set_ylim(bottom=0)
    ax_lat.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    labels = [f"{r['spec']} S={r['streams']}" for r in rows]
    wall = np.array([r["split"]["wall_us"] for r in rows])
    parts = {
        "backbone": [r["split"]["backbone_us"] for r in rows],
        "state read/write": [
            r["split"]["state_read_us"] + r["split"]["state_write_us"] for r in rows
        ],
        "state serde": [r["split"]["serde_us"] for r in rows],
        "model step": [r["split"]["model_us"] for r in rows],
    }
    inference = np.array([r["split"]["dofn_us"] for r in rows])
    parts["rest of inference"] = inference - np.sum(list(parts.values())[1:], axis=0)
    parts["runner, Kafka, decode"] = wall - inference - np.array(parts["backbone"])
    left = np.zeros(len(rows))
    for name, values in parts.items():
        share = 100 * np.clip(np.array(values), 0, None) / wall
        ax_split.barh(labels, share, left=left, label=name)
        left += share
    ax_split.set(xlabel="% of per-frame wall time at capacity", title="where per-frame time goes")
    ax_split.invert_yaxis()
    ax_split.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
