"""``costream demo``: the whole loop on one machine, no arguments needed.

Starts the embedded broker, publishes synthetic video from several cameras in real time, runs the
video action-detection spec with the shipped demo model on the embedded runner, shows live
per-camera detections, then writes a score-timeline plot per camera and a summary, and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

HELP = "Run the end-to-end demo: embedded broker, 3 synthetic cameras, live detections, plots."
LOG_LEVEL = "INFO"  # Beam's pipeline events and costream's warnings (pipelines/logs.py)

_ROOT = Path(__file__).resolve().parents[2]
# what the demo sets for the spec's ${...} values (and the Flink work dir); restored at the end,
# so that a demo run inside another program (tests call the CLI's main) leaves no trace
_ENV = (
    "COSTREAM_BOOTSTRAP",
    "COSTREAM_INPUT_TOPIC",
    "COSTREAM_OUTPUT_TOPIC",
    "COSTREAM_DEAD_LETTER_TOPIC",
    "COSTREAM_WEIGHTS",
    "COSTREAM_FLINK_DIR",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cameras", type=int, default=3, help="number of synthetic camera streams")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of video per camera")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    p.add_argument("--spec", default=str(_ROOT / "pipelines" / "specs" / "video.yaml"))
    p.add_argument(
        "--weights", default=str(_ROOT / "pipelines" / "assets" / "demo_video_model.safetensors")
    )
    p.add_argument("--out", default="out/demo", help="folder for plots and summary.json")
    p.add_argument(
        "--flink",
        action="store_true",
        help="run the pipeline on a local Flink cluster (costream flink up on free ports, the "
        "demo, then down) instead of the embedded runner",
    )


def run(args: Any, extra: list[str]) -> int:
    if not Path(args.weights).exists():
        print(
            f"demo model {args.weights} not found; train it with scripts/train_demo_video_model.py"
        )
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cams = [f"cam-{i + 1}" for i in range(args.cameras)]
    frames = int(args.seconds * args.fps)
    gt: dict[str, list[str]] = {c: [] for c in cams}

    saved = {name: os.environ.get(name) for name in _ENV}
    try:
        return _with_runner(args, extra, out_dir, cams, frames, gt)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _with_runner(
    args: Any,
    extra: list[str],
    out_dir: Path,
    cams: list[str],
    frames: int,
    gt: dict[str, list[str]],
) -> int:
    cluster = None
    runner_name = "DirectRunner"
    if args.flink:
        import tempfile

        from costream.pipelines.flink import FlinkCluster, Ports

        work = Path(tempfile.mkdtemp(prefix="costream-demo-flink-"))
        print(f"starting a local Flink cluster in {work} ...", flush=True)
        cluster = FlinkCluster(work, ports=Ports(0, 0, 0, 0, 0, 0), cwd=_ROOT).up()
        os.environ["COSTREAM_FLINK_DIR"] = str(work)
        print(f"flink_master={cluster.flink_master} (web UI http://{cluster.flink_master}/)")
        runner_name = "FlinkRunner"
        extra = [*extra, f"--flink_master={cluster.flink_master}"]
    try:
        return _demo(args, extra, cluster, runner_name, out_dir, cams, frames, gt)
    finally:
        if cluster is not None:
            cluster.down()
            print("Flink cluster stopped")


def _demo(
    args: Any,
    extra: list[str],
    cluster: Any,
    runner_name: str,
    out_dir: Path,
    cams: list[str],
    frames: int,
    gt: dict[str, list[str]],
) -> int:
    import numpy as np
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from costream.connectors import contract
    from costream.connectors.broker import EmbeddedBroker
    from costream.connectors.synthetic import iter_synthetic_video
    from costream.pipelines.plots import plot_score_timeline
    from costream.pipelines.runner import run_spec

    with EmbeddedBroker() as broker:
        broker.create_topics(["frames"], partitions=args.cameras)
        broker.create_topics(["detections"], partitions=args.cameras)
        broker.create_topics(["dead-letter"], partitions=1)
        print(
            f"broker at {broker.bootstrap}; {args.cameras} cameras x {frames} frames at {args.fps:g} fps"
        )
        os.environ.update(
            COSTREAM_BOOTSTRAP=broker.bootstrap,
            COSTREAM_INPUT_TOPIC="frames",
            COSTREAM_OUTPUT_TOPIC="detections",
            COSTREAM_DEAD_LETTER_TOPIC="dead-letter",
            COSTREAM_WEIGHTS=str(args.weights),
        )
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        t0 = time.time() + 2.0  # give the pipeline a moment to start (Flink: set once it runs)

        def camera(i: int, cam: str) -> None:
            for index, ts_ms, rgb, label in iter_synthetic_video(
                frames, (160, 120), args.fps, seed=i
            ):
                gt[cam].append(label)
                delay = t0 + ts_ms / 1000 - time.time()
                if delay > 0:
                    time.sleep(delay)
                rec = contract.frame_record(
                    cam, index, int(t0 * 1000) + ts_ms, contract.CT_JPEG, contract.encode_jpeg(rgb)
                )
                producer.send("frames", key=rec.key, value=rec.value, headers=rec.headers)
            producer.flush()

        threads = [
            threading.Thread(target=camera, args=(i, c), daemon=True) for i, c in enumerate(cams)
        ]
        done = threading.Event()
        failure: list[BaseException] = []

        def pipeline() -> None:
            try:
                run_spec(args.spec, runner_name, extra, until_idle_s=5.0)
            except BaseException as e:  # surfaced in the main thread
                failure.append(e)
            finally:
                done.set()

        runner = threading.Thread(target=pipeline, daemon=True)
        runner.start()
        if cluster is not None:  # the cameras start once the job runs (job submission takes ~20 s)
            deadline = time.time() + 300
            while not done.is_set() and time.time() < deadline:
                if any(j["status"] == "RUNNING" for j in cluster.jobs()):
                    break
                time.sleep(0.5)
            t0 = time.time() + 5.0
        for t in threads:
            t.start()

        consumer = KafkaConsumer(  # no group, so nothing to commit
            bootstrap_servers=broker.bootstrap, consumer_timeout_ms=500, enable_auto_commit=False
        )
        consumer.assign([TopicPartition("detections", p) for p in range(args.cameras)])
        dets: dict[str, list[dict]] = {c: [] for c in cams}
        last_print = 0.0
        last_received = t0
        while True:
            finished = done.is_set()  # the pipeline flushed everything: one more drain suffices
            for msg in consumer:
                d = json.loads(msg.value)
                if any(x["frame_index"] == d["frame_index"] for x in dets[d["stream_id"]][-64:]):
                    continue  # at-least-once: a re-emitted detection (dedupe by stream, frame)
                dets[d["stream_id"]].append(d)
                last_received = time.time()
                if time.time() - last_print > 0.5:
                    last_print = time.time()
                    line = "  ".join(
                        f"{c}: #{ds[-1]['frame_index']:>4} {ds[-1]['top']['label']:<12} {ds[-1]['top']['score']:.2f}{'' if ds[-1]['warm'] else ' (warm-up)'}"
                        for c, ds in dets.items()
                        if ds
                    )
                    print("\r" + line, end="", flush=True)
            if finished:
                break
        print()
        for t in threads:
            t.join()
        runner.join()
        if failure:
            raise failure[0]
        consumer.assign([TopicPartition("dead-letter", 0)])
        consumer.seek_to_beginning()
        dead = len(list(consumer))
        consumer.close()
        producer.close()

    summary = summarize(
        dets, dead, cameras=args.cameras, frames=frames, fps=args.fps,
        first_sent_s=t0, last_received_s=last_received,
    )  # fmt: skip
    n_det = summary["detections"]
    for cam, ds in dets.items():
        if not ds:
            continue
        labels = ds[0]["labels"]
        scores = np.array([d["scores"] for d in ds])
        truth = np.array(
            [[1.0 if gt[cam][d["frame_index"]] == lab else 0.0 for lab in labels] for d in ds]
        )
        plot_score_timeline(
            scores,
            labels,
            truth,
            out_dir / f"{cam}.png",
            first_frame=ds[0]["frame_index"],
            skip=[0],
            title=f"{cam}: per-frame scores",
        )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"plots and summary in {out_dir}/")
    ok = n_det == args.cameras * frames and dead == 0
    return 0 if ok else 1


def summarize(
    dets: dict[str, list[dict]],
    dead: int,
    *,
    cameras: int,
    frames: int,
    fps: float,
    first_sent_s: float,
    last_received_s: float,
) -> dict[str, Any]:
    """The demo's summary: counts, latency percentiles, and the two rates, named for what they are.

    ``input_frames_per_s`` is the rate the cameras publish at (``cameras * fps``, paced in real
    time). ``processing_frames_per_s`` is what the pipeline delivered: detections divided by the
    wall time from the first frame's publication (``first_sent_s``) to the arrival of the last
    detection (``last_received_s``), both ``time.time()`` seconds. It is at most about the input
    rate, since frames arrive in real time; well below it, the pipeline fell behind.
    """
    import numpy as np

    latencies = np.array([d["latency_ms"] for ds in dets.values() for d in ds])
    n_det = int(sum(len(ds) for ds in dets.values()))
    wall = last_received_s - first_sent_s
    return {
        "cameras": cameras,
        "frames_produced": cameras * frames,
        "detections": n_det,
        "dead_letters": dead,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if n_det else None,
        "latency_ms_p99": float(np.percentile(latencies, 99)) if n_det else None,
        "input_frames_per_s": cameras * fps,
        "processing_s": wall if n_det else None,
        "processing_frames_per_s": n_det / wall if n_det and wall > 0 else None,
    }
