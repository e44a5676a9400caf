"""Cross-stream batching: in-pipeline vs the stepper alone, state bytes, exactness; one run.

Four parts, each measured side by side in this one run (the machine's load is printed with it):

1. **Paper configuration in the pipeline** (1 block, d=1024, n=64, 8 heads, FFN 1024, random
   weights, 64-d input features): the features spec on the embedded runner and broker with S
   streams (default 64), one stream per step and batched (``shards`` 1), against the stepper
   alone (no Beam, no Kafka) stepping the same S streams one by one (B=1) and all together
   (``process_many``, B=S). Target: in-pipeline batched frames/s >= 50% of the stepper alone
   at B=S.
2. **State bytes per stream**: the stored cell of one stream (``Stored``: header, metadata, last
   features, model state) against the formula of ``docs/continual-attention.md`` (elements x
   dtype size + 8 for the counter + 4 D_in for the held features), float32 and float16 state.
3. **Exactness**: batched vs one-by-one detections of the demo model over random batch
   compositions: the largest relative score difference and the share of bitwise-equal scores;
   float16/bfloat16 state against float32.
4. **Per-frame cost of the stepper** on the 64-d demo model: ``process`` (B=1) vs
   ``process_many`` at B=8 and 32, microseconds per frame (decisions, state bytes, model).

    .venv/bin/python benchmarks/bench_batching.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_batching.py --quick    # fewer frames, S=16

Another revision's code, for a before/after comparison (run the two in alternation)::

    git worktree add --detach /tmp/old REV
    COSTREAM_BENCH_SRC=/tmp/old .venv/bin/python benchmarks/bench_batching.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revisions import use_source

# the checkout measured: this one, or $COSTREAM_BENCH_SRC (a worktree of another revision)
ROOT = use_source()

PAPER = dict(d_in=64, d_model=1024, window=64, heads=8, ffn=1024)


def load_avg() -> str:
    """The 1-minute load average and the CPU count, for the record."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def paper_model(path: Path, blocks: int = 1) -> str:
    """Save a random paper-configuration model (THUMOS14 classes) to ``path``; its weights file."""
    from costream.models.zoo import get_model, save_model

    torch.manual_seed(0)
    m = get_model(f"oadtr_b{blocks}", **PAPER, classes=22).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(m, path)
    return str(path)


def frames_for(streams: int, steps: int, d_in: int, seed: int = 0):
    from costream.transforms.stepper import Frame

    x = np.random.default_rng(seed).standard_normal((64, d_in)).astype(np.float32)
    return [
        Frame(f"s{s:03d}", i, 1000 + i, x[(i * streams + s) % 64])
        for i in range(steps)
        for s in range(streams)
    ]


def stepper_alone(weights: str, streams: int, steps: int) -> dict[str, float]:
    """Frames/s of the stepper alone: B=1 (process, frame by frame) and B=S (process_many)."""
    from costream.transforms.stepper import StreamStepper, load_stepper

    torch.set_num_threads(1)  # as the DoFns' setup
    st: StreamStepper = load_stepper(weights)
    frames = frames_for(streams, steps, st.d_in)
    warm = streams * 2  # the first rounds allocate; leave them out
    store: dict[str, bytes] = {}
    t0 = 0.0
    for j, f in enumerate(frames):
        if j == warm:
            t0 = time.perf_counter()
        store[f.stream_id], _ = st.process(
            store.get(f.stream_id), f.stream_id, f.frame_index, f.ts_ms, f.features, now_ms=0
        )
    one = (len(frames) - warm) / (time.perf_counter() - t0)
    store = {}
    for r in range(steps):
        if r == 2:
            t0 = time.perf_counter()
        changed, _ = st.process_many(store, frames[r * streams : (r + 1) * streams], now_ms=0)
        store.update(changed)
    many = (len(frames) - warm) / (time.perf_counter() - t0)
    return {"b1_fps": one, "batched_fps": many}


def in_pipeline(weights: str, streams: int, frames: int, batch: bool) -> float:
    """Frames/s of the features spec (backlog of S x F frames) with ``weights``."""
    import bench_e2e as e2e

    from costream.connectors.broker import EmbeddedBroker

    os.environ["COSTREAM_BATCH_STREAMS"] = "true" if batch else "false"
    os.environ["COSTREAM_SHARDS"] = "1"
    payloads = e2e.make_payloads("features")
    plan = {"streams": streams, "frames": frames // streams, "partitions": 4, "rate": None}
    with EmbeddedBroker() as broker:
        out, _ = e2e.run_once(broker, "features", plan, payloads, 3.0, weights=weights)
    problem = e2e.check_complete(out, streams, frames // streams)
    if problem:
        print(f"  !! {problem}", flush=True)
    last = max(r[4] for r in out["rows"]) / 1000
    return len(out["rows"]) / (last - out["send_start"])


def state_bytes(weights: str, state_dtype: str) -> dict[str, Any]:
    """One stream's stored cell after n frames, against the formula."""
    from costream.transforms.stepper import load_stepper
    from costream.transforms.stored import Stored

    st = load_stepper(weights, state_dtype=state_dtype)
    store: dict[str, bytes] = {}
    for f in frames_for(1, st.model.window + 3, st.d_in):
        store[f.stream_id], _ = st.process(
            store.get(f.stream_id), f.stream_id, f.frame_index, f.ts_ms, f.features, now_ms=0
        )
    cell = store["s000"]
    state = st.load_state(Stored.from_bytes(cell).state)
    item = torch.empty(0, dtype=getattr(torch, state_dtype)).element_size()
    elements = sum(v.numel() for v in state.tensors.values())
    formula = elements * item + 8 + 4 * st.d_in
    cfg = st.model.config
    return {
        "model": f"L={cfg.blocks} d={cfg.d_model} n={cfg.window} h={cfg.heads}",
        "dtype": state_dtype,
        "elements": elements,
        "formula": formula,
        "measured": len(cell),
        "over": len(cell) / formula - 1,
    }


def exactness(weights: str) -> dict[str, float]:
    """Batched vs one-by-one (float32), and half-precision state vs float32, demo model."""
    from costream.transforms.stepper import StreamStepper, load_stepper

    st: StreamStepper = load_stepper(weights)
    frames = frames_for(12, 4 * st.model.window, st.d_in, seed=3)
    rng = np.random.default_rng(5)
    order = rng.permutation(len(frames))
    frames = [frames[i] for i in sorted(order, key=lambda i: (frames[i].frame_index, i))]
    ref = []
    store: dict[str, bytes] = {}
    for f in frames:
        store[f.stream_id], r = st.process(
            store.get(f.stream_id), f.stream_id, f.frame_index, f.ts_ms, f.features, now_ms=0
        )
        ref.append(np.array(r.detection.scores))
    worst, equal, total = 0.0, 0, 0
    for size in (2, 5, 12, 31, 64):
        store = {}
        got = []
        for k in range(0, len(frames), size):
            changed, res = st.process_many(store, frames[k : k + size], now_ms=0)
            store.update(changed)
            got.extend(np.array(r.detection.scores) for r in res)
        for a, b in zip(ref, got):
            worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))))
            equal += int(np.array_equal(a, b))
            total += 1
    half = {}
    for dt in ("float16", "bfloat16"):
        h = load_stepper(weights, state_dtype=dt)
        store, err = {}, 0.0
        for k in range(0, len(frames), 12):
            changed, res = h.process_many(store, frames[k : k + 12], now_ms=0)
            store.update(changed)
            for r, a in zip(res, ref[k : k + 12]):
                err = max(err, float(np.max(np.abs(np.array(r.detection.scores) - a))))
        half[dt] = err
    return {"max_rel": worst, "bitwise_share": equal / total, "compared": total, **half}


def per_frame_cost(weights: str) -> dict[int, float]:
    """Microseconds per frame of the stepper on the demo model: B=1 and batched at B=8, 32."""
    from costream.transforms.stepper import load_stepper

    torch.set_num_threads(1)
    st = load_stepper(weights)
    out = {}
    for B in (1, 8, 32):
        frames = frames_for(B, 200 if B < 32 else 60, st.d_in)
        store: dict[str, bytes] = {}
        if B == 1:
            t0 = time.perf_counter()
            for f in frames:
                store[f.stream_id], _ = st.process(
                    store.get(f.stream_id), f.stream_id, f.frame_index, f.ts_ms, f.features,
                    now_ms=0,
                )  # fmt: skip
        else:
            t0 = time.perf_counter()
            for k in range(0, len(frames), B):
                changed, _ = st.process_many(store, frames[k : k + B], now_ms=0)
                store.update(changed)
        out[B] = 1e6 * (time.perf_counter() - t0) / len(frames)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--streams", type=int, help="streams of part 1 (default 64; quick 16)")
    ap.add_argument("--frames", type=int, help="backlog frames of part 1 (default 3200)")
    ap.add_argument("--out", type=Path, default=Path("out/bench_batching"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    S = args.streams or (16 if args.quick else 64)
    F = args.frames or (800 if args.quick else 3200)
    demo = str(ROOT / "pipelines" / "assets" / "demo_model.safetensors")
    paper = paper_model(args.out / "paper_b1.safetensors")
    paper2 = paper_model(args.out / "paper_b2.safetensors", blocks=2)
    results: dict[str, Any] = {"load_start": load_avg()}
    print(f"bench_batching: {load_avg()}", flush=True)

    print(f"\n1. paper configuration (1 block), S={S} streams, {F} frames", flush=True)
    alone = stepper_alone(paper, S, max(4, 600 // S))
    print(
        f"  stepper alone: B=1 {alone['b1_fps']:.0f} frames/s, B={S} "
        f"{alone['batched_fps']:.0f} frames/s ({alone['batched_fps'] / alone['b1_fps']:.1f}x)",
        flush=True,
    )
    b1 = in_pipeline(paper, S, F, batch=False)
    print(f"  pipeline, one stream per step: {b1:.0f} frames/s", flush=True)
    bt = in_pipeline(paper, S, F, batch=True)
    print(f"  pipeline, batched (shards 1): {bt:.0f} frames/s", flush=True)
    ratio = bt / alone["batched_fps"]
    print(
        f"  in-pipeline batched / stepper alone at B={S}: {ratio:.2f} (target >= 0.50); "
        f"batched / one stream per step in the pipeline: {bt / b1:.2f}x; {load_avg()}",
        flush=True,
    )
    results["paper"] = {"streams": S, **alone, "pipeline_b1": b1, "pipeline_batched": bt}

    print("\n2. state bytes per stream (stored cell) vs the formula", flush=True)
    rows = [state_bytes(w, dt) for w in (demo, paper, paper2) for dt in ("float32", "float16")]
    print(
        f"  {'model':<26} {'dtype':<8} {'elements':>9} {'formula B':>10} {'measured B':>10} {'over':>6}"
    )
    for r in rows:
        print(
            f"  {r['model']:<26} {r['dtype']:<8} {r['elements']:>9} {r['formula']:>10} "
            f"{r['measured']:>10} {100 * r['over']:>5.1f}%"
        )
    results["state_bytes"] = rows

    print("\n3. exactness, demo model: batched vs one by one", flush=True)
    ex = exactness(demo)
    print(
        f"  {ex['compared']} scores compared: max relative difference {ex['max_rel']:.2e}, "
        f"bitwise equal {100 * ex['bitwise_share']:.1f}%; half-precision state vs float32: "
        f"float16 max |diff| {ex['float16']:.2e}, bfloat16 {ex['bfloat16']:.2e}",
        flush=True,
    )
    results["exactness"] = ex

    print("\n4. stepper per-frame cost, demo model (us per frame)", flush=True)
    cost = per_frame_cost(demo)
    print("  " + ", ".join(f"B={B}: {us:.0f} us" for B, us in cost.items()), flush=True)
    results["per_frame_us"] = cost
    results["load_end"] = load_avg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_batching.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{load_avg()}; results: {args.out / 'bench_batching.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
