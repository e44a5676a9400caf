"""Train the video demo model ``pipelines/assets/demo_video_model.safetensors`` (reproducible).

    .venv/bin/python scripts/train_demo_video_model.py            # 24 train + 8 val videos
    .venv/bin/python scripts/train_demo_video_model.py --seed 1 --train-videos 8 --val-videos 4

The model ``pipelines/specs/video.yaml`` runs: its ``ExtractFeatures`` step uses the
``resnet18_small`` backbone with ``weights: random`` (seed 0, D = 128, 112 x 112 input) and its
``ContinualInference`` step loads this file. Steps, all deterministic in ``--seed``:

1. Generate synthetic videos (:func:`costream.connectors.synthetic.synthetic_video`; classes
   ``background``, ``red_square``, ``blue_circle``) at the size ``costream produce
   synthetic:video`` publishes by default (320 x 240, 10 fps).
2. Turn every frame into a feature vector exactly as the pipeline does: JPEG (quality 90, as the
   producer) -> stream-contract record -> :func:`costream.transforms.decode.decode_record`
   (decode + resize to the backbone's input) -> the backbone of
   ``BackboneConfig("resnet18_small", weights="random")`` (batched, as ``FeatureModelHandler``).
3. Write them as per-video ``.npz`` (``features`` (T, 128), ``targets`` (T, 3) one-hot) in the
   ``train`` / ``test`` layout :mod:`costream.models.data` reads (a temporary folder unless
   ``--features-dir`` is given) and read them back with ``load_dataset``.
4. Train the same tiny CoOadTR-b1-shaped network as ``scripts/train_demo_model.py`` (d = 64,
   window 16, 1 block), check the continual model's validation mAP equals the regular one's, and
   save weights + card (``demo_video_model.json``) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from costream.connectors import contract
from costream.connectors.synthetic import VIDEO_CLASSES, synthetic_video
from costream.models.data import OadDataset, Video, load_dataset, one_hot, write_npz_dir
from costream.models.train import TrainConfig, check_continual, train_model
from costream.models.zoo import get_model, save_model
from costream.transforms.backbones import BackboneConfig
from costream.transforms.feature_handler import record_features

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pipelines" / "assets"
NAME = "demo_video_model"
BACKBONE = "resnet18_small"  # as pipelines/specs/video.yaml
BACKBONE_WEIGHTS = "random"
BACKBONE_SEED = 0  # ExtractFeatures' default seed: the spec sets none
JPEG_QUALITY = 90  # costream produce's default


def _demo_config() -> dict:
    """The demo network shape, shared with scripts/train_demo_model.py (``DEMO``)."""
    spec = importlib.util.spec_from_file_location(
        "_train_demo_model", ROOT / "scripts" / "train_demo_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return dict(mod.DEMO)


def video_features(
    net: torch.nn.Module,
    cfg: BackboneConfig,
    frames: list[np.ndarray],
    stream_id: str,
    fps: float,
    batch_size: int,
) -> np.ndarray:
    """(T, D) features of ``frames`` through the pipeline's encode -> decode -> backbone path."""
    records = (
        contract.frame_record(
            stream_id,
            i,
            int(round(1000 * i / fps)),
            contract.CT_JPEG,
            contract.encode_jpeg(rgb, JPEG_QUALITY),
        )
        for i, rgb in enumerate(frames)
    )
    return record_features(net, cfg, records, batch_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the videos and the training")
    p.add_argument("--train-videos", type=int, default=24)
    p.add_argument("--val-videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=200, help="frames per video")
    p.add_argument("--size", default="320x240", help="WxH of the synthetic frames")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=64, help="backbone batch size")
    p.add_argument("--steps", type=int, default=1200, help="training steps")
    p.add_argument("--features-dir", default=None, help="keep the .npz features here")
    p.add_argument("--out-dir", default=str(ASSETS))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    w, _, h = a.size.lower().partition("x")
    size = (int(w), int(h))
    t_start = time.perf_counter()

    # 1-3. videos -> pipeline features -> .npz dataset
    torch.set_num_threads(2)
    bcfg = BackboneConfig(BACKBONE, weights=BACKBONE_WEIGHTS, seed=BACKBONE_SEED)
    net = bcfg.build()
    plan = [("train", f"train_{k:03d}", a.seed * 10_000 + k) for k in range(a.train_videos)]
    plan += [("test", f"val_{k:03d}", a.seed * 10_000 + 5_000 + k) for k in range(a.val_videos)]
    meta = {"class_names": list(VIDEO_CLASSES), "background": 0, "ambiguous": None}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.features_dir or tmp)
        videos: dict[str, list[Video]] = {"train": [], "test": []}
        for split, name, seed in tqdm(plan, desc="features", unit="video", disable=a.no_progress):
            v = synthetic_video(a.frames, size, a.fps, seed)
            x = video_features(net, bcfg, v.frames, name, a.fps, a.batch_size)
            videos[split].append(Video(name, x, one_hot(v.labels, VIDEO_CLASSES)))
        for split, vids in videos.items():
            write_npz_dir(OadDataset(vids, **meta), data, split)
        train, val = load_dataset(data, "train"), load_dataset(data, "test")
    t_features = time.perf_counter() - t_start
    if train.feature_dim != bcfg.feature_dim or train.class_names != list(VIDEO_CLASSES):
        raise SystemExit(f"unexpected dataset: D={train.feature_dim}, classes {train.class_names}")

    # 4. train (same network and recipe as scripts/train_demo_model.py)
    torch.set_num_threads(1)  # reproducible training
    torch.manual_seed(a.seed)
    model = get_model(
        "oadtr_b1", d_in=train.feature_dim, classes=train.num_classes, **_demo_config()
    )
    cfg = TrainConfig(
        steps=a.steps, batch_size=64, lr=2e-3, eval_every=200, seed=a.seed,
        progress=not a.no_progress,
    )  # fmt: skip
    result = train_model(model, train, val, cfg)
    metrics = {**check_continual(model, val), "history": result.history}
    cmd = (
        f"scripts/train_demo_video_model.py --seed {a.seed} --train-videos {a.train_videos} "
        f"--val-videos {a.val_videos} --frames {a.frames} --size {a.size} --fps {a.fps:g} "
        f"--steps {a.steps}"
    )
    notes = {
        "purpose": "demo model for pipelines/specs/video.yaml; synthetic shapes, not a real dataset",
        "trained_on": (
            f"{a.train_videos} train + {a.val_videos} validation synthetic videos "
            f"(costream.connectors.synthetic.synthetic_video, {a.frames} frames, {a.size}, "
            f"{a.fps:g} fps), JPEG q{JPEG_QUALITY} -> decode_record -> {bcfg.identity()} features"
        ),
        "backbone": {
            "name": BACKBONE,
            "weights": BACKBONE_WEIGHTS,
            "seed": BACKBONE_SEED,
            "input_size": list(bcfg.image_size),
            "feature_dim": bcfg.feature_dim,
        },
        "script": cmd,
        "input": f"one {train.feature_dim}-d {bcfg.identity()} feature vector per frame; "
        "scores are logits over the classes",
    }
    out = Path(a.out_dir) / f"{NAME}.safetensors"
    card = save_model(
        model, out, classes=train.class_names, background=train.background,
        ambiguous=train.ambiguous, metrics=metrics, notes=notes,
    )  # fmt: skip
    seconds = time.perf_counter() - t_start
    print(json.dumps({"feature_dim": train.feature_dim, "classes": train.class_names}))
    print(
        f"{out}: {out.stat().st_size / 1e3:.0f} kB, sha256 {card['sha256'][:12]}; validation mAP "
        f"regular {metrics['val_mAP']:.4f} = continual {metrics['val_mAP_continual']:.4f} "
        f"(chance {metrics['val_chance_mAP']:.4f}), mcAP {metrics['val_mcAP']:.4f}; "
        f"features {t_features:.0f} s, total {seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
