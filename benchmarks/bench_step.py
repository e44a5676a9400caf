"""Per-step latency and throughput: continual encoder vs the regular encoder recomputing the window.

Paper configuration (d=1024, n=64, h=8, FFN 1024), 1 and 2 layers, same weights, measured side by
side in one run for B streams each receiving one new frame per step. The regular side is
``torch.nn.TransformerEncoder`` on the (B, n, d) windows (its fused eval fast path), read at the
newest token. Also prints the weight-streaming roofline for B=1: weight bytes / measured memory
read bandwidth, the time a step cannot beat when every weight must come from memory once.

    .venv/bin/python benchmarks/bench_step.py            # full table + out/bench_step.png
    .venv/bin/python benchmarks/bench_step.py --quick    # B in {1, 8}, fewer repeats
    .venv/bin/python benchmarks/bench_step.py --two-block  # only the interleaved 2-block table
    .venv/bin/python benchmarks/bench_step.py --two-block --before REV  # + REV's continual encoder

The two-block table times the continual and the regular 2-block encoder in
alternation, one call of each per round, and reports per-side medians over the rounds, so a
load change on the shared machine hits both sides alike. Its extra sides: ``unpacked`` (this
checkout with ``models/linear.py``'s packed weights off: torch's default MKL products) and, with
``--before REV``, REV's ``ContinualEncoder`` on the same weights (its ``models/`` imported as a
separate package).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from costream.models import ContinualEncoder
from costream.models.linear import packed_weights, set_packed_weights


def timeit(fn, min_time: float, min_reps: int = 3) -> float:
    """Median seconds per call over at least ``min_reps`` calls and ``min_time`` seconds."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each side, timing one call of every side per round in turn."""
    for fn in sides.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def two_block_table(
    batches: list[int],
    rounds: int,
    extra: dict[str, nn.Module] | None = None,
    before: str | None = None,
) -> list[tuple[int, dict[str, float]]]:
    """Continual vs regular 2-block encoder, paper configuration, interleaved; prints ratios.

    ``extra`` adds more continual encoders (same weights) as further interleaved sides, e.g. an
    older revision for a before/after comparison.
    """
    d, n, h, f = 1024, 64, 8, 1024
    regular, enc = build(2, d, n, h, f)
    continual = {"continual": enc, **(extra or {})}
    if before:
        continual[f"@{before}"] = encoder_at(before, regular, n)
    if packed_weights():
        continual["unpacked"] = enc
    names = list(continual)
    print(f"two blocks, d={d}, n={n}, h={h}, FFN={f}; {rounds} interleaved rounds, medians")
    header = f"{'B':>5} {'regular ms':>11} " + " ".join(
        f"{name + ' ms':>14} {'ratio':>6}" for name in names
    )
    print(header)
    print("-" * len(header))
    table = []
    with torch.no_grad():
        for B in batches:
            x, window = torch.randn(B, d), torch.randn(B, n, d)
            sides: dict[str, Callable[[], object]] = {
                "regular": lambda window=window: regular(window)[:, -1]
            }
            for name, model in continual.items():
                state = model.init_state(B)
                for _ in range(n + 1):  # warm state (guarded retroactive path in steady state)
                    model.step(torch.randn(B, d), state)
                sides[name] = lambda model=model, x=x, state=state: model.step(x, state)
                if name == "unpacked":
                    sides[name] = lambda model=model, x=x, state=state: unpacked(model, x, state)
            med = interleaved(sides, rounds)
            table.append((B, med))
            print(
                f"{B:>5} {med['regular'] * 1e3:>11.2f} "
                + " ".join(
                    f"{med[name] * 1e3:>14.2f} {med['regular'] / med[name]:>5.2f}x"
                    for name in names
                ),
                flush=True,
            )
    return table


def unpacked(model: nn.Module, x: torch.Tensor, state: object) -> object:
    """One step with packed weights off (torch's default products)."""
    previous = set_packed_weights(False)
    try:
        return model.step(x, state)
    finally:
        set_packed_weights(previous)


def encoder_at(rev: str, regular: nn.TransformerEncoder, n: int) -> nn.Module:
    """REV's ``ContinualEncoder`` twin of ``regular``: REV's models/ as a package of its own."""
    root = Path(__file__).resolve().parents[1]
    dest = Path(tempfile.mkdtemp(prefix="costream-step-"))
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "models"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    package = "costream_models_" + re.sub(r"\W", "_", rev)  # REV as an identifier
    (dest / "models").rename(dest / package)
    sys.path.insert(0, str(dest))
    module = importlib.import_module(f"{package}.encoder")
    return module.ContinualEncoder.from_torch(regular, window=n)


def read_bandwidth(nbytes: int = 512 << 20) -> float:
    """Bytes/s of a streaming read (sum over a buffer much larger than the caches)."""
    x = torch.ones(nbytes // 4)
    return nbytes / timeit(lambda: x.sum(), min_time=1.0, min_reps=5)


def build(
    layers: int, d: int, n: int, h: int, f: int
) -> tuple[nn.TransformerEncoder, ContinualEncoder]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d, h, f, dropout=0.1, activation="gelu", batch_first=True, bias=False
    )
    regular = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    return regular, ContinualEncoder.from_torch(regular, window=n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B in {1, 8} and shorter timing")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--two-block", action="store_true", help="only the interleaved 2-block table")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (2-block table)")
    ap.add_argument("--before", help="2-block table: also time revision REV's continual encoder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.two_block:
        two_block_table(args.batches or [1, 8, 64, 256], args.rounds or 9, before=args.before)
        return
    d, n, h, f = 1024, 64, 8, 1024
    batches = args.batches or ([1, 8] if args.quick else [1, 8, 64, 256])
    min_time = 0.3 if args.quick else 1.0

    bw = read_bandwidth()
    print(
        f"torch {torch.__version__}, {args.threads} threads; memory read bandwidth {bw / 1e9:.1f} GB/s"
    )
    print(
        f"paper configuration: d={d}, n={n}, h={h}, FFN={f}; float32; one new frame per stream per step\n"
    )
    header = (
        f"{'layers':>6} {'B':>5} {'threads':>7} {'continual ms':>13} {'regular ms':>11} "
        f"{'speed-up':>9} {'cont. frames/s':>15} {'reg. frames/s':>14}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    with torch.no_grad():
        for layers in (1, 2):
            regular, enc = build(layers, d, n, h, f)
            for B in batches:
                # one stream is latency-bound: thread hand-offs can cost more than they save, so
                # B=1 is measured both single-threaded and with all threads, on both sides
                for threads in sorted({1, args.threads}) if B == 1 else [args.threads]:
                    torch.set_num_threads(threads)
                    x = torch.randn(B, d)
                    window = torch.randn(B, n, d)
                    state = enc.init_state(B)
                    for _ in range(n):  # warm state (guarded retroactive path in steady state)
                        enc.step(torch.randn(B, d), state)
                    t_co = timeit(lambda enc=enc, x=x, state=state: enc.step(x, state), min_time)
                    t_re = timeit(
                        lambda regular=regular, window=window: regular(window)[:, -1],
                        min_time,
                        min_reps=2,
                    )
                    rows.append((layers, B, threads, t_co, t_re))
                    print(
                        f"{layers:>6} {B:>5} {threads:>7} {t_co * 1e3:>13.3f} {t_re * 1e3:>11.2f} "
                        f"{t_re / t_co:>8.1f}x {B / t_co:>15.0f} {B / t_re:>14.0f}",
                        flush=True,
                    )
                torch.set_num_threads(args.threads)
            single = [r for r in rows if r[0] == layers and r[1] == 1]
            if single:
                best_co, best_re = min(r[3] for r in single), min(r[4] for r in single)
                print(
                    f"  B=1, {layers} layer(s), best thread count on each side: continual "
                    f"{best_co * 1e3:.3f} ms, regular {best_re * 1e3:.2f} ms = {best_re / best_co:.1f}x"
                )
                if layers == 1:
                    weight_bytes = sum(p.numel() * p.element_size() for p in enc.parameters())
                    roofline = weight_bytes / bw
                    print(
                        f"  roofline B=1, 1 layer: {weight_bytes / 1e6:.1f} MB weights / "
                        f"{bw / 1e9:.1f} GB/s = {roofline * 1e3:.3f} ms; best step "
                        f"{best_co * 1e3:.3f} ms = {best_co / roofline:.2f}x roofline"
                    )
    print()
    two_block_table(batches, args.rounds or (3 if args.quick else 9))
    plot(rows, args.out / "bench_step.png")


def plot(rows: list[tuple[int, int, int, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for layers, style in ((1, "-"), (2, "--")):
        best: dict[int, tuple[float, float]] = {}  # B -> best (continual, regular) seconds
        for _, B, _, t_co, t_re in (r for r in rows if r[0] == layers):
            co, re = best.get(B, (t_co, t_re))
            best[B] = (min(co, t_co), min(re, t_re))
        bs = sorted(best)
        ax.plot(
            bs, [best[b][0] * 1e3 for b in bs], "o" + style, label=f"continual, {layers} layer(s)"
        )
        ax.plot(
            bs,
            [best[b][1] * 1e3 for b in bs],
            "s" + style,
            label=f"regular window, {layers} layer(s)",
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="streams B",
        ylabel="ms per step",
        title="d=1024, n=64, h=8 (CPU)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
