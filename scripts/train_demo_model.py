"""Train the small demo model shipped in ``pipelines/assets/`` (reproducible from a seed).

    .venv/bin/python scripts/train_demo_model.py                     # synthetic features, D=64
    .venv/bin/python scripts/train_demo_model.py --feature-dim 128   # another synthetic D
    .venv/bin/python scripts/train_demo_model.py --data DATA         # real features (any layout
                                                                     # costream.models.data reads)

Writes ``demo_model.safetensors`` and its card ``demo_model.json`` (name, config, classes,
feature dim, regular and continual validation mAP, sha256) to ``--out-dir``. The model is a
CoOadTR-b1-shaped network (1 block, d=64, n=16, 4 heads): about 40 k parameters, under 0.2 MB,
trained in well under a minute on one core. The streaming demo feeds it one feature vector per
frame and reads per-frame class scores; when the demo's backbone produces features of another
size or meaning, retrain with ``--data`` pointing at features from that backbone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from costream.models.data import load_dataset
from costream.models.synthetic import SyntheticConfig, write_dataset
from costream.models.train import TrainConfig, check_continual, train_model
from costream.models.zoo import get_model, save_model

ASSETS = Path(__file__).resolve().parents[1] / "pipelines" / "assets"
DEMO = dict(d_model=64, window=16, heads=4, ffn=128, blocks=1, pe_size=31, dropout=0.1)


def main(argv: list[str] | None = None) -> int:
    """Train, check continual == regular on the validation split, save weights + card."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default=None, help="dataset folder with train/test splits (default: synthetic)"
    )
    p.add_argument("--feature-dim", type=int, default=64, help="D of the synthetic features")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(ASSETS))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # reproducible and polite on shared CPUs

    with tempfile.TemporaryDirectory() as tmp:
        if a.data is None:
            syn = SyntheticConfig(feature_dim=a.feature_dim, seed=a.seed)
            data = write_dataset(Path(tmp) / "synthetic", syn, {"train": 48, "test": 12})
            source = f"synthetic OAD features (costream.models.synthetic, {syn})"
        else:
            data, source = Path(a.data), f"features from {a.data}"
        train, val = load_dataset(data, "train"), load_dataset(data, "test")

    torch.manual_seed(a.seed)
    model = get_model("oadtr_b1", d_in=train.feature_dim, classes=train.num_classes, **DEMO)
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=64,
        lr=2e-3,
        eval_every=200,
        seed=a.seed,
        progress=not a.no_progress,
    )
    t0 = time.perf_counter()
    result = train_model(model, train, val, cfg)
    metrics = {**check_continual(model, val), "history": result.history}
    notes = {
        "purpose": "demo model for the streaming demo; not a THUMOS14/TVSeries model",
        "trained_on": source,
        "script": f"scripts/train_demo_model.py --seed {a.seed} --steps {a.steps}"
        + (f" --data {a.data}" if a.data else f" --feature-dim {a.feature_dim}"),
        "input": f"one {train.feature_dim}-d feature vector per frame; scores are logits over the classes",
    }
    seconds = round(
        time.perf_counter() - t0, 1
    )  # printed, not stored: the file stays byte-reproducible
    out = Path(a.out_dir) / "demo_model.safetensors"
    card = save_model(
        model, out, classes=train.class_names, background=train.background,
        ambiguous=train.ambiguous, metrics=metrics, notes=notes,
    )  # fmt: skip
    print(
        f"{out}: {out.stat().st_size / 1e3:.0f} kB, sha256 {card['sha256'][:12]}; validation mAP "
        f"regular {metrics['val_mAP']:.4f} = continual {metrics['val_mAP_continual']:.4f} "
        f"(chance {metrics['val_chance_mAP']:.4f}), mcAP {metrics['val_mcAP']:.4f}; {seconds} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
