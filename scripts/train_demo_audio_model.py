"""Train the audio demo model ``pipelines/assets/demo_audio_model.safetensors`` (reproducible).

    .venv/bin/python scripts/train_demo_audio_model.py             # 16 train + 4 val clips of 30 s
    .venv/bin/python scripts/train_demo_audio_model.py --seed 1 --train-clips 4 --val-clips 2

The model ``pipelines/specs/audio.yaml`` runs: its ``ExtractFeatures`` step uses the ``logmel``
backbone (16 kHz, 64 mels, patch 8 x hop 160: one 80 ms chunk of 1280 samples -> one token of
512 values) and its ``ContinualInference`` step loads this file. Steps, all deterministic in
``--seed``:

1. Build the records ``costream produce synthetic:audio --seed S`` publishes
   (:func:`costream.connectors.sources.open_source`: 30 s of
   :func:`costream.connectors.synthetic.synthetic_audio`, classes ``background``, ``tone``,
   ``burst``, cut into 80 ms L16 chunks) and the per-chunk ground truth
   (``SyntheticAudio.chunk_labels``: the label covering most of each chunk).
2. Turn every chunk into a token exactly as the pipeline does: stream-contract record ->
   :func:`costream.transforms.decode.decode_record` (L16 -> float) -> the backbone of
   ``BackboneConfig("logmel")`` (:class:`~costream.models.logmel.LogMelSpectrogram`,
   batched, as ``FeatureModelHandler``).
3. Train a small ``audio_b2`` (conv front-end, 2 blocks, d = 32, window 8 = 640 ms: 21 k
   parameters, 92 kB), check the continual model's validation mAP equals the regular
   one's, and save weights + card (``demo_audio_model.json``, class names included) to
   ``--out-dir``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from costream.connectors.sources import DEFAULT_CHUNK_MS, SYNTHETIC_AUDIO_SECONDS, open_source
from costream.connectors.synthetic import AUDIO_CLASSES, synthetic_audio
from costream.models.data import OadDataset, Video, one_hot
from costream.models.logmel import LogMelOptions
from costream.models.train import TrainConfig, check_continual, train_model
from costream.models.zoo import get_model, save_model
from costream.transforms.backbones import BackboneConfig
from costream.transforms.feature_handler import record_features

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pipelines" / "assets"
NAME = "demo_audio_model"
BACKBONE = "logmel"  # as pipelines/specs/audio.yaml
RATE = 16000  # the spec's ExtractFeatures rate
DEMO_AUDIO = dict(channels=16, d_model=32, window=8, heads=2, ffn=64, pe_size=15, dropout=0.1)
"""The demo network shape: ``audio_b2`` (2 blocks) shrunk; the logmel front-end fixes n_mels=64,
patch=8. Events last 0.5-1 s (6-12 chunks), so a window of 8 tokens (640 ms) spans one."""


def clip(net: torch.nn.Module, cfg: BackboneConfig, name: str, seed: int, batch: int) -> Video:
    """One synthetic clip as ``costream produce synthetic:audio --seed`` publishes it, with truth."""
    source = open_source("synthetic:audio", name, rate=RATE, start_ms=0, seed=seed)
    records = [r for r, _ in source.records]
    x = record_features(net, cfg, records, batch)
    labels = synthetic_audio(SYNTHETIC_AUDIO_SECONDS, RATE, seed).chunk_labels(cfg.chunk_samples)
    if len(labels) != len(x):
        raise RuntimeError(f"{len(x)} chunks but {len(labels)} chunk labels for {name}")
    return Video(name, x, one_hot(labels, AUDIO_CLASSES))


def main(argv: list[str] | None = None) -> int:
    """Make features, train, check continual == regular on validation, save weights + card."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the clips and the training")
    p.add_argument("--train-clips", type=int, default=16, help="30 s synthetic clips to train on")
    p.add_argument("--val-clips", type=int, default=4, help="held-out 30 s clips")
    p.add_argument("--batch-size", type=int, default=128, help="backbone batch size")
    p.add_argument("--steps", type=int, default=800, help="training steps")
    p.add_argument("--out-dir", default=str(ASSETS))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # reproducible and polite on shared CPUs
    t_start = time.perf_counter()

    # 1-2. synthetic clips -> pipeline records -> logmel tokens (train and validation seeds differ)
    bcfg = BackboneConfig(BACKBONE, logmel=LogMelOptions(rate=RATE))
    if bcfg.chunk_samples != round(RATE * DEFAULT_CHUNK_MS / 1000):
        raise SystemExit(f"open_source's {DEFAULT_CHUNK_MS} ms chunks do not fit {bcfg}")
    net = bcfg.build()
    plan = [("train", f"train_{k:03d}", a.seed * 10_000 + k) for k in range(a.train_clips)]
    plan += [("val", f"val_{k:03d}", a.seed * 10_000 + 5_000 + k) for k in range(a.val_clips)]
    clips: dict[str, list[Video]] = {"train": [], "val": []}
    for split, name, seed in tqdm(plan, desc="features", unit="clip", disable=a.no_progress):
        clips[split].append(clip(net, bcfg, name, seed, a.batch_size))
    meta = dict(class_names=list(AUDIO_CLASSES), background=0, ambiguous=None, source="synthetic")
    train, val = OadDataset(clips["train"], **meta), OadDataset(clips["val"], **meta)
    t_features = time.perf_counter() - t_start
    print(
        f"features: {train.num_frames} train + {val.num_frames} val chunks of "
        f"{train.feature_dim} values in {t_features:.0f} s"
    )

    # 3. train, compare regular and continual on the validation clips, save
    torch.manual_seed(a.seed)
    model = get_model("audio_b2", classes=len(AUDIO_CLASSES), **DEMO_AUDIO)
    cfg = TrainConfig(
        steps=a.steps, batch_size=64, lr=2e-3, eval_every=200, seed=a.seed,
        progress=not a.no_progress,
    )  # fmt: skip
    result = train_model(model, train, val, cfg)
    for h in result.history:
        print(
            f"step {h['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in h.items() if k != "step")
        )
    metrics = {**check_continual(model, val), "history": result.history}
    notes = {
        "purpose": "demo model for pipelines/specs/audio.yaml; synthetic sounds, not a real dataset",
        "trained_on": (
            f"{a.train_clips} train + {a.val_clips} validation synthetic clips "
            f"(costream produce synthetic:audio: {SYNTHETIC_AUDIO_SECONDS:g} s of "
            f"costream.connectors.synthetic.synthetic_audio at {RATE} Hz, {DEFAULT_CHUNK_MS} ms "
            f"L16 chunks) -> decode_record -> {bcfg.identity()} tokens"
        ),
        "backbone": {
            "name": BACKBONE,
            "rate": RATE,
            "n_mels": bcfg.logmel.n_mels,
            "patch": bcfg.logmel.patch,
            "hop_length": bcfg.logmel.hop_length,
            "chunk_samples": bcfg.chunk_samples,
            "feature_dim": bcfg.feature_dim,
        },
        "script": (
            f"scripts/train_demo_audio_model.py --seed {a.seed} --train-clips {a.train_clips} "
            f"--val-clips {a.val_clips} --steps {a.steps}"
        ),
        "input": f"one {train.feature_dim}-value log-mel token per {DEFAULT_CHUNK_MS} ms chunk; "
        "scores are logits over the classes",
    }
    out = Path(a.out_dir) / f"{NAME}.safetensors"
    card = save_model(
        model, out, classes=train.class_names, background=train.background,
        ambiguous=train.ambiguous, metrics=metrics, notes=notes,
    )  # fmt: skip
    seconds = time.perf_counter() - t_start  # printed, not stored: the file stays reproducible
    params = sum(t.numel() for t in model.parameters())
    print(
        f"{out}: {out.stat().st_size / 1e3:.0f} kB ({params} parameters), sha256 "
        f"{card['sha256'][:12]}; validation mAP regular {metrics['val_mAP']:.4f} = continual "
        f"{metrics['val_mAP_continual']:.4f} (chance {metrics['val_chance_mAP']:.4f}), mcAP "
        f"{metrics['val_mcAP']:.4f}; total {seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
