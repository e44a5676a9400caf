"""Memory with a churn of distinct stream ids on the embedded runner: RSS vs distinct ids.

Each of ``--ids`` distinct stream ids sends ``--frames`` feature frames and is never heard from
again (cameras that come and go, ids that rotate). The features spec runs on the embedded runner
with a short idle timeout, once with the idle sweep (the default) and once without it (the TTL
is then only checked when a stream's next frame arrives, which never happens here), side by
side in one run, each in its own process. A sampler thread inside that process records
(frames stepped, streams held, RSS) every half second. Printed: RSS at each quarter of the ids,
growth per 1,000 ids, and the ratio no-sweep / sweep; plot: ``out/bench_stream_churn.png``.

    .venv/bin/python benchmarks/bench_stream_churn.py [--ids 100000] [--frames 1] [--idle-s 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "pipelines" / "specs" / "features.yaml"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    """One arm: run the spec in this process and print JSON samples."""
    from costream.pipelines.runner import run_spec
    from costream.transforms import counters
    from costream.transforms.inference import ContinualInference

    if not args.sweep:  # the TTL alone: checked only when a stream's next frame arrives
        init = ContinualInference.__init__

        @functools.wraps(init)  # the spec loader reads the signature
        def no_sweep(self, *a, **kw):
            init(self, *a, **kw)
            self.sweep_every_s = float("inf")

        ContinualInference.__init__ = no_sweep
    samples: list[tuple[int, int, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            snap = counters.snapshot()
            samples.append((snap.get("frames_in", 0), snap.get("streams_held", 0), rss_mb()))
            print(f"  [{'sweep' if args.sweep else 'no sweep'}] {samples[-1][0]} frames, "
                  f"{samples[-1][1]} streams held, {samples[-1][2]:.0f} MB", file=sys.stderr,
                  flush=True)  # fmt: skip

    base = rss_mb()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    run_spec(SPEC, "DirectRunner", until_idle_s=3.0)
    done.set()
    t.join()
    print(json.dumps({"baseline_mb": base, "samples": samples}))


def produce(bootstrap: str, topic: str, ids: int, frames: int) -> None:
    import numpy as np
    from kafka import KafkaProducer
    from tqdm import tqdm

    from costream.connectors import contract

    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=1 << 18)
    for k in tqdm(range(ids), desc=f"produce {topic}", unit="id", mininterval=2):
        for i in range(frames):
            payload, ct = contract.encode_features(x[(k + i) % 64])
            r = contract.frame_record(f"id-{k}", i, 1_000 + 40 * i, ct, payload)
            p.send(topic, key=r.key, value=r.value, headers=r.headers)
    p.flush()
    p.close()


def at(samples: list, frames: int) -> tuple[float, int]:
    """RSS and streams held at the first sample with at least ``frames`` frames stepped."""
    for f, held, rss in samples:
        if f >= frames:
            return rss, held
    return samples[-1][2], samples[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=100_000)
    ap.add_argument("--frames", type=int, default=1, help="frames per stream id")
    ap.add_argument("--idle-s", type=float, default=2.0, help="the spec's idle_timeout_s")
    ap.add_argument("--arms", default="sweep,no-sweep", help="which runs, comma-separated")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from costream.connectors.broker import EmbeddedBroker

    results = {}
    with EmbeddedBroker() as broker:
        for sweep in [int(a == "sweep") for a in args.arms.split(",")]:
            topic = f"churn-{uuid.uuid4().hex[:6]}"
            broker.create_topics([topic], partitions=2)
            produce(broker.bootstrap, topic, args.ids, args.frames)
            env = {
                **os.environ,
                "COSTREAM_BOOTSTRAP": broker.bootstrap,
                "COSTREAM_INPUT_TOPIC": topic,
                "COSTREAM_OUTPUT_TOPIC": f"{topic}-out",
                "COSTREAM_DEAD_LETTER_TOPIC": f"{topic}-dlq",
                "COSTREAM_GROUP_ID": f"g-{topic}",
                "COSTREAM_IDLE_TIMEOUT_S": str(args.idle_s),
            }
            broker.create_topics([f"{topic}-out", f"{topic}-dlq"], partitions=1)
            cmd = [sys.executable, __file__, "--child", f"--sweep={sweep}"]
            t0 = time.monotonic()
            out = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, check=True)
            res = json.loads(out.stdout.decode().strip().splitlines()[-1])
            res["seconds"] = time.monotonic() - t0
            results["sweep" if sweep else "no sweep"] = res
    total = args.ids * args.frames
    print(
        f"\n{args.ids} distinct stream ids x {args.frames} frame(s), idle_timeout_s={args.idle_s:g}"
    )
    if len(results) == 2:
        print(f"{'ids':>8} | {'sweep: RSS MB':>14} {'held':>7} | "
              f"{'no sweep: RSS MB':>17} {'held':>7} | ratio")  # fmt: skip
        for q in (0.25, 0.5, 0.75, 1.0):
            f = int(total * q)
            a, ha = at(results["sweep"]["samples"], f)
            b, hb = at(results["no sweep"]["samples"], f)
            print(
                f"{int(args.ids * q):>8} | {a:>14.0f} {ha:>7} | {b:>17.0f} {hb:>7} | {b / a:5.2f}"
            )
    else:
        for name, res in results.items():
            for q in (0.25, 0.5, 0.75, 1.0):
                rss, held = at(res["samples"], int(total * q))
                print(f"{name}: {int(args.ids * q):>8} ids, RSS {rss:6.0f} MB, {held} held")
    for name, res in results.items():
        s = res["samples"]
        lo, hi = at(s, total // 4)[0], at(s, total)[0]
        per_id_kb = (hi - lo) * 1024 / (0.75 * args.ids)
        print(f"{name}: baseline {res['baseline_mb']:.0f} MB, peak {max(r for *_, r in s):.0f} MB, "
              f"growth {per_id_kb:.2f} kB per id after the first quarter "
              f"({res['seconds']:.0f} s)")  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, res in results.items():
            s = res["samples"]
            ax.plot([f / args.frames for f, *_ in s], [r for *_, r in s], label=name)
        ax.set_xlabel("distinct stream ids seen")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(f"embedded runner, idle_timeout_s={args.idle_s:g}")
        ax.legend()
        out = ROOT / "out" / "bench_stream_churn.png"
        out.parent.mkdir(exist_ok=True)
        fig.savefig(out, dpi=110, bbox_inches="tight")
        print(f"plot: {out}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
