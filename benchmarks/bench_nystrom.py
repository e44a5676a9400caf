"""Continual Nyström vs continual single-output vs regular windowed attention, side by side.

Three parts, all in one run:

1. MACs per frame (clean convention: matmuls only, docs/continual-attention.md#macs-per-frame) and measured per-step
   latency of one encoder layer at the paper configuration (d=1024, n=64, h=8, f=1024), for the
   regular windowed layer (softmax and Nyström), the continual single-output layer (CoSi) and
   continual Nyström single-output layers with m ∈ {2, 4, 8, 16} (continual and fixed landmarks).
2. Where the attention-only MAC ratio (regular softmax SDPA over the window / continual Nyström
   step) reaches "three orders of magnitude": a sweep over n and m.
3. On the synthetic OAD data (models/synthetic.py): the approximation error of Nyström attention
   against exact attention with the weights of an exact-attention model, and the mAP of a model
   trained with Nyström attention vs the exact one (skip with --no-train).

    .venv/bin/python benchmarks/bench_nystrom.py            # ~3-6 min on one CPU thread
    .venv/bin/python benchmarks/bench_nystrom.py --quick    # fewer reps, shorter training
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from costream.models.encoder import ContinualEncoder
from costream.models.flops import continual_nystrom_macs, nystrom_macs


# -- 1. MACs and latency at the paper configuration ----------------------------------------------
def layer_macs(attn: float, *, d: int, n: int, f: int, continual: bool) -> float:
    """Clean MACs per frame of one layer = projections + attention + FFN (one output)."""
    rows = 1 if continual else n
    return rows * 4 * d * d + attn + rows * 2 * d * f


def per_step_ms(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def stepper(enc: ContinualEncoder, B: int, d: int) -> Callable[[], object]:
    state = enc.init_state(B)
    xs = torch.randn(256, B, d)
    i = [0]

    def step() -> object:
        i[0] += 1
        return enc.step(xs[i[0] % 256], state)

    for _ in range(enc.window):  # start warm, so landmark updates run at their steady rate
        step()
    return step


@torch.no_grad()
def paper_table(d: int, n: int, h: int, f: int, ms: list[int], B: int, reps: int) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, h, f, dropout=0.0, batch_first=True).eval()
    regular = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    window = torch.randn(B, n, d)
    reg_attn = 2 * n * n * d
    reg_layer = layer_macs(reg_attn, d=d, n=n, f=f, continual=False)

    rows: list[tuple[str, float, float, float]] = []  # name, attention MACs, layer MACs, ms
    t_reg = per_step_ms(lambda: regular(window), max(3, reps // 10))
    rows.append(("regular window, softmax", reg_attn, reg_layer, t_reg))
    for m in ms:
        enc = ContinualEncoder.from_torch(regular, window=n, attention="nystrom", landmarks=m)
        a = nystrom_macs(n, d, h, m)
        t = per_step_ms(lambda enc=enc: enc(window), max(3, reps // 10))
        rows.append(
            (f"regular window, Nyström m={m}", a, layer_macs(a, d=d, n=n, f=f, continual=False), t)
        )
    cosi = ContinualEncoder.from_torch(regular, window=n)
    a = 2 * n * d
    rows.append(
        (
            "continual single-output (CoSi)",
            a,
            layer_macs(a, d=d, n=n, f=f, continual=True),
            per_step_ms(stepper(cosi, B, d), reps),
        )
    )
    for mode in ("continual", "fixed"):
        for m in ms:
            enc = ContinualEncoder.from_torch(
                regular, window=n, attention="nystrom", landmarks=m, landmark_mode=mode
            )
            a = continual_nystrom_macs(n, d, h, m, landmark_mode=mode)
            t = per_step_ms(stepper(enc, B, d), reps)
            rows.append(
                (
                    f"co-Nyström single, {mode} lm, m={m}",
                    a,
                    layer_macs(a, d=d, n=n, f=f, continual=True),
                    t,
                )
            )

    print(
        f"\n## 1. One encoder layer per frame: d={d}, n={n}, h={h}, f={f}, B={B}, "
        f"{torch.get_num_threads()} thread(s); ratios = regular softmax window / row"
    )
    print(
        f"{'layer':40s} {'attn MACs':>12s} {'attn ratio':>10s} {'layer MACs':>12s} {'layer ratio':>11s} {'ms/step':>8s} {'speed-up':>8s}"
    )
    for name, a, lm, t in rows:
        print(
            f"{name:40s} {a:12,.0f} {reg_attn / a:9.1f}x {lm:12,.0f} {reg_layer / lm:10.1f}x {t:8.3f} {t_reg / t:7.1f}x"
        )


@torch.no_grad()
def latency_vs_n(d: int, h: int, f: int, ns: list[int], ms: list[int], B: int, reps: int) -> None:
    """Per-step latency of one continual layer, CoSi vs co-Nyström, as the window grows."""
    print(
        f"\n## 1b. Continual layer per-step latency (ms) as n grows: d={d}, h={h}, f={f}, B={B}; "
        f"attention MACs in brackets"
    )
    print(f"{'n':>6s} {'CoSi':>18s} " + " ".join(f"{'co-Nyström m=' + str(m):>20s}" for m in ms))
    for n in ns:
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d, h, f, dropout=0.0, batch_first=True).eval()
        regular = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
        cells = [
            f"{per_step_ms(stepper(ContinualEncoder.from_torch(regular, window=n), B, d), reps):7.3f} [{2 * n * d / 1e6:6.3f}M]"
        ]
        for m in ms:
            enc = ContinualEncoder.from_torch(regular, window=n, attention="nystrom", landmarks=m)
            t = per_step_ms(stepper(enc, B, d), reps)
            cells.append(f"{t:7.3f} [{continual_nystrom_macs(n, d, h, m) / 1e6:6.3f}M]")
        print(f"{n:6d} " + " ".join(f"{c:>20s}" for c in cells))


def ratio_sweep(d: int, h: int, ns: list[int], ms: list[int]) -> None:
    print(
        f"\n## 2. Attention-only MAC ratio, regular softmax SDPA over n rows (2 n^2 d) / continual "
        f"Nyström single-output step (d={d}, h={h}); fixed-landmark ratio in brackets"
    )
    print(f"{'n':>6s} " + " ".join(f"{'m=' + str(m):>16s}" for m in ms) + f" {'CoSi (2nd)':>12s}")
    for n in ns:
        cells = []
        for m in ms:
            r = 2 * n * n * d / continual_nystrom_macs(n, d, h, m)
            rf = 2 * n * n * d / continual_nystrom_macs(n, d, h, m, landmark_mode="fixed")
            cells.append(f"{r:7.0f}x [{rf:5.0f}x]")
        print(f"{n:6d} " + " ".join(f"{c:>16s}" for c in cells) + f" {n:11.0f}x")


# -- 3. Synthetic OAD: approximation error and mAP ------------------------------------------------
def synthetic_part(ms: list[int], steps: int, m_train: int) -> None:
    try:
        from costream.models.synthetic import SyntheticConfig, make_dataset
        from costream.models.train import (
            TrainConfig,
            evaluate,
            predict_stream,
            predict_windows,
            train_model,
        )
        from costream.models.zoo import continual_from_regular, get_model
    except ImportError as e:  # the data / training / zoo modules are another issue's work
        print(f"\n## 3. skipped: {e}")
        return
    from costream.models.attention import MultiheadWeights
    from costream.models.nystrom_attention import NystromAttention

    train = make_dataset(SyntheticConfig(num_videos=48, seed=0, split="train"))
    test = make_dataset(SyntheticConfig(num_videos=24, seed=0, split="test"))
    small = dict(
        d_in=train.feature_dim,
        classes=train.num_classes,
        d_model=64,
        window=32,
        heads=4,
        ffn=128,
        pe_size=63,
    )
    n = small["window"]
    cfg = TrainConfig(steps=steps, batch_size=64, eval_every=steps, progress=False, seed=0)

    def trained(name: str, **kw: object) -> tuple[nn.Module, float]:
        torch.manual_seed(0)
        model = get_model(name, **small, **kw)
        return model, train_model(model, train, test, cfg).seconds

    def maps(model: nn.Module) -> tuple[float, float]:
        """mAP of the regular model over windows (oracle) and of its continual twin streamed."""
        window = evaluate(predict_windows(model, test), test, n).mAP
        stream = evaluate(predict_stream(continual_from_regular(model), test), test, n).mAP
        return window, stream

    exact, secs = trained("oadtr_b1")
    exact_maps = maps(exact)
    print(
        f"\n## 3. Synthetic OAD (D_in={train.feature_dim}, C={train.num_classes}, {len(train.videos)} train / "
        f"{len(test.videos)} test videos); model d=64, n={n}, h=4, f=128, 1 block, {steps} training steps"
    )

    # (a) Approximation error with the exact model's weights on real test windows (every 4th).
    x = torch.cat(
        [torch.from_numpy(v.features).unfold(0, n, 1).transpose(1, 2)[::4] for v in test.videos]
    )
    with torch.no_grad():
        z = exact.pe(
            exact.embed(x), torch.zeros(len(x), dtype=torch.long)
        )  # (W, n, d) layer-1 input
        mha = MultiheadWeights.from_torch(exact.encoder.layers[0].self_attn)
        ref = mha.attend_window(z)  # (W, n, d) exact attention
        ref_logits = exact(x)
    print(
        f"(a) Nyström vs exact attention, exact model's weights, {len(x)} test windows "
        f"(relative Frobenius errors; mAP when Nyström replaces attention without retraining; "
        f"exact: {exact_maps[0]:.4f})"
    )
    print(
        f"{'m':>4s} {'pinv':>9s} {'attn, all rows':>14s} {'attn, newest row':>16s} {'logits':>8s} {'mAP swapped':>12s}"
    )
    for m in ms:
        for pinv in ("iterative", "exact"):
            ny = NystromAttention(mha.d_model, mha.num_heads, n, bias=False, landmarks=m, pinv=pinv)
            ny.load_state_dict(mha.state_dict())
            swapped = get_model(
                "nystrom_oadtr_b1", **small, attention=f"nystrom:m={m},pinv={pinv}"
            ).eval()
            swapped.load_state_dict(exact.state_dict())
            with torch.no_grad():
                out = ny(z)
                e_all = ((out - ref).norm() / ref.norm()).item()
                e_last = ((out[:, -1] - ref[:, -1]).norm() / ref[:, -1].norm()).item()
                e_log = ((swapped(x) - ref_logits).norm() / ref_logits.norm()).item()
            swap_map = evaluate(predict_windows(swapped, test), test, n).mAP
            print(f"{m:4d} {pinv:>9s} {e_all:14.4f} {e_last:16.4f} {e_log:8.4f} {swap_map:12.4f}")

    # (b) Trained with Nyström attention (the regular model is the training path), then streamed.
    print(
        "(b) trained models: mAP of the regular model over windows and of its continual twin streamed"
    )
    print(f"{'model':44s} {'mAP window':>10s} {'mAP stream':>10s} {'train s':>8s}")
    print(
        f"{'oadtr_b1, exact softmax':44s} {exact_maps[0]:10.4f} {exact_maps[1]:10.4f} {secs:8.0f}"
    )
    for mode in ("continual", "fixed"):
        model, secs = trained("nystrom_oadtr_b1", attention=f"nystrom:m={m_train},landmarks={mode}")
        w, st = maps(model)
        print(
            f"{'nystrom_oadtr_b1, m=' + str(m_train) + ', ' + mode + ' landmarks':44s} {w:10.4f} {st:10.4f} {secs:8.0f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="streams per step (B)")
    p.add_argument("--reps", type=int, default=50, help="timed continual steps per row")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-train", action="store_true", help="skip part 3 (synthetic data, training)")
    p.add_argument("--steps", type=int, default=600, help="training steps per model in part 3")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    reps = 10 if a.quick else a.reps
    paper_table(d=1024, n=64, h=8, f=1024, ms=[2, 4, 8, 16], B=a.batch, reps=reps)
    latency_vs_n(d=1024, h=8, f=1024, ns=[64, 512, 2048], ms=[4, 16], B=8, reps=reps)
    ratio_sweep(d=1024, h=8, ns=[64, 128, 256, 512, 1024, 4096], ms=[1, 2, 4, 8, 16])
    if not a.no_train:
        synthetic_part(ms=[1, 2, 4, 8, 16, 32], steps=150 if a.quick else a.steps, m_train=4)


if __name__ == "__main__":
    main()
