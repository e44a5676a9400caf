"""Train the GTZAN-setting demo model ``pipelines/assets/demo_gtzan_model.safetensors`` (reproducible).

    .venv/bin/python scripts/train_demo_gtzan_model.py              # 2000 train + 100 val clips
    .venv/bin/python scripts/train_demo_gtzan_model.py --seed 1 --train-clips 40 --steps 50

The network is the papers' one-block audio model at full size, ``gtzan_b1`` (docs/audio-setting.md):
128-d VGGish-like token per 1 s sub-clip every 0.25 s, window n = 120 (30 s), d = 192, 16 heads,
FFN 192, 10 genres (295 k parameters, 1.2 MB). Only the data is synthetic. Steps, all
deterministic in ``--seed``:

1. Clips of synthetic VGGish-like embeddings (:func:`costream.models.synthetic.make_gtzan_dataset`:
   genre prototypes, sections that borrow other genres, a clip offset, correlated noise, ReLU).
   Training clips are 128 tokens (32 s), so each has 9 full windows (many short clips generalise
   better than few long ones); validation clips are 120 tokens (30 s), one window each, scored
   at their last token as the papers score a clip.
2. Train ``gtzan_b1`` (``costream.models.train.train_model``: random positional phase per window).
3. Accuracy on the held-out clips, regular (window) and continual (streamed token by token; equal),
   against chance (1 / 10: the genres are balanced); save weights + card to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from costream.models.audio import GTZAN_GENRES
from costream.models.synthetic import GtzanSyntheticConfig, clip_genres, make_gtzan_dataset
from costream.models.train import (
    TrainConfig,
    check_continual,
    predict_stream,
    predict_windows,
    train_model,
)
from costream.models.zoo import get_model, save_model

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pipelines" / "assets"
NAME = "demo_gtzan_model"
TRAIN_TOKENS = 128  # 32 s clips: 9 training windows of n = 120 each


def clip_accuracy(logits: list[np.ndarray], genres: np.ndarray) -> float:
    """Share of clips whose last full window's argmax is the clip's genre."""
    pred = np.array([int(np.argmax(z[-1])) for z in logits])
    return float((pred == genres).mean())


def main(argv: list[str] | None = None) -> int:
    """Make clips, train, check continual == regular on validation, save weights + card."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the clips and the training")
    p.add_argument("--train-clips", type=int, default=2000, help="32 s synthetic training clips")
    p.add_argument("--val-clips", type=int, default=100, help="held-out 30 s clips")
    p.add_argument("--steps", type=int, default=400, help="training steps (batch 64)")
    p.add_argument("--out-dir", default=str(ASSETS))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # reproducible and polite on shared CPUs
    t_start = time.perf_counter()

    # 1. synthetic VGGish-like clips (train and validation are different splits of one seed)
    data = GtzanSyntheticConfig(seed=a.seed)
    train = make_gtzan_dataset(
        GtzanSyntheticConfig(num_clips=a.train_clips, tokens=TRAIN_TOKENS, seed=a.seed)
    )
    val = make_gtzan_dataset(GtzanSyntheticConfig(num_clips=a.val_clips, seed=a.seed, split="val"))
    genres = clip_genres(val)
    chance = float(np.bincount(genres, minlength=len(GTZAN_GENRES)).max() / len(genres))

    # 2. train the full-size one-block model of the papers' audio setting
    torch.manual_seed(a.seed)
    model = get_model("gtzan_b1")
    cfg = TrainConfig(
        steps=a.steps, batch_size=64, lr=1e-3, eval_every=max(1, a.steps // 4), seed=a.seed,
        progress=not a.no_progress,
    )  # fmt: skip
    result = train_model(model, train, val, cfg)
    for h in result.history:
        print(
            f"step {h['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in h.items() if k != "step")
        )

    # 3. clip accuracy, regular and streamed, against chance; save
    acc = clip_accuracy(predict_windows(model, val), genres)
    acc_co = clip_accuracy(predict_stream(model.to_continual(), val), genres)
    if acc != acc_co:
        raise SystemExit(f"continual accuracy {acc_co} differs from regular {acc}")
    metrics = {
        "val_accuracy": acc,
        "val_accuracy_continual": acc_co,
        "val_chance_accuracy": chance,
        **check_continual(model, val),
        "history": result.history,
    }
    notes = {
        "purpose": "demo model of the papers' GTZAN setting; synthetic embeddings, not GTZAN",
        "trained_on": (
            f"{a.train_clips} train clips of {TRAIN_TOKENS} tokens + {a.val_clips} validation "
            f"clips of {data.tokens} tokens of synthetic VGGish-like {data.dim}-d embeddings "
            f"(costream.models.synthetic.make_gtzan_dataset, seed {a.seed}: splits 'train', 'val')"
        ),
        "synthetic": {"seed": a.seed, "train_tokens": TRAIN_TOKENS, "val_tokens": data.tokens},
        "config": "gtzan_b1 at full size (the papers' one-block model); nothing reduced",
        "metric": "val_accuracy: share of held-out 30 s clips whose prediction at the last "
        "token (window of all 120 tokens) is the clip's genre; chance = largest genre share",
        "input": "one 128-d VGGish embedding per 1 s sub-clip, a new token every 0.25 s "
        "(costream.models.vggish.VGGishFrontEnd makes them from 16 kHz PCM); scores are logits",
        "script": (
            f"scripts/train_demo_gtzan_model.py --seed {a.seed} --train-clips {a.train_clips} "
            f"--val-clips {a.val_clips} --steps {a.steps}"
        ),
    }
    out = Path(a.out_dir) / f"{NAME}.safetensors"
    card = save_model(
        model, out, classes=list(GTZAN_GENRES), background=None, ambiguous=None,
        metrics=metrics, notes=notes,
    )  # fmt: skip
    seconds = time.perf_counter() - t_start  # printed, not stored: the file stays reproducible
    params = sum(t.numel() for t in model.parameters())
    print(
        f"{out}: {out.stat().st_size / 1e6:.2f} MB ({params} parameters), sha256 "
        f"{card['sha256'][:12]}; held-out clip accuracy regular {acc:.3f} = continual "
        f"{acc_co:.3f} (chance {chance:.3f}); total {seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
