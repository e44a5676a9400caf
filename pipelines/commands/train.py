"""``costream train``: train a regular zoo model on per-frame features, save safetensors + card."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from costream.models.online import OnlineTransformer

HELP = "Train a zoo model (e.g. oadtr_b1) on per-frame features; writes safetensors + a JSON card."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--data", required=True, help="dataset folder (.npz per video, or LSTR layout)"
    )
    parser.add_argument(
        "--model",
        default="oadtr_b1",
        help="zoo name (see `costream flops --list`); co_* trains its regular twin",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="weights file to write (model.safetensors; the card goes to model.json)",
    )
    parser.add_argument("--split", default="train", help="training split (default: train)")
    parser.add_argument(
        "--val-split",
        default="test",
        help="validation split; 'none' to skip; when missing, 20%% of the training videos are held out",
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument(
        "--warmup", type=int, default=50, help="linear warm-up steps before the cosine decay"
    )
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument(
        "--class-weighting", default="sqrt-inverse", choices=["sqrt-inverse", "inverse", "none"]
    )
    parser.add_argument(
        "--eval-every", type=int, default=100, help="validation every N steps (the curve)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. --set d_model=128 --set window=32 (d_in and classes come from the data)",
    )
    parser.add_argument(
        "--curve", default=None, help="validation-curve PNG (default: OUT with .curve.png)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["d_model=128", "pe_learned=true"]`` -> ``{"d_model": 128, "pe_learned": True}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}.")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Train, validate, save weights + card + curve; print a summary."""
    from dataclasses import asdict, replace
    from pathlib import Path

    import torch

    from costream.models.data import DataFormatError, OadDataset, load_dataset
    from costream.models.synthetic import chance_map
    from costream.models.train import TrainConfig, train_model
    from costream.models.zoo import get_model, model_info, save_model
    from costream.pipelines.plots import plot_training_curve

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        info = model_info(args.model)
        train = load_dataset(args.data, args.split)
        val: OadDataset | None = None
        if args.val_split.lower() != "none":
            try:
                val = load_dataset(args.data, args.val_split)
            except DataFormatError as e:
                if len(train) < 2:
                    raise
                k = max(1, len(train) // 5)
                val = replace(train, videos=train.videos[-k:], source=f"{train.source} (held out)")
                train = replace(train, videos=train.videos[:-k])
                print(f"note: no validation split ({e}); holding out {k} of the training videos.")
    except (DataFormatError, KeyError) as e:
        print(f"error: {e}")
        return 2
    name = args.model
    regular_name = name[3:] if name.startswith("co_") else name
    overrides = parse_overrides(args.set) | {
        "d_in": train.feature_dim,
        "classes": train.num_classes,
    }
    if info.family == "audio":
        overrides.pop("d_in")  # d_in = n_mels * patch, set n_mels/patch with --set
    torch.manual_seed(args.seed)
    try:
        # a regular name (the co_ prefix dropped): get_model builds an OnlineTransformer
        model = cast("OnlineTransformer", get_model(regular_name, **overrides))
    except (ValueError, TypeError) as e:
        print(f"error: {e}")
        return 2
    if model.config.d_in != train.feature_dim:
        print(
            f"error: the model takes {model.config.d_in} values per step; the data has {train.feature_dim}."
        )
        return 2
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=min(args.warmup, args.steps), grad_clip=args.grad_clip,
        class_weighting=args.class_weighting, eval_every=args.eval_every, seed=args.seed,
        device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    n = model.window
    print(
        f"training {model.name} on {train.source}: {len(train)} videos, {train.num_frames:,} frames, "
        f"D={train.feature_dim}, C={train.num_classes}, window n={n}"
        + (f"; validation: {len(val)} videos" if val is not None else "")
    )
    result = train_model(model, train, val, cfg)
    metrics: dict[str, Any] = dict(result.final)
    if val is not None:
        metrics["val_chance_mAP"] = chance_map(val, n)
        metrics["history"] = result.history
        print("validation curve:")
        print("   step  train_loss  val_loss  val_mAP  val_mcAP")
        for h in result.history:
            print(
                f"  {h['step']:5d}  {h['train_loss']:10.4f}  {h['val_loss']:8.4f}  {h['val_mAP']:7.4f}  {h['val_mcAP']:8.4f}"
            )
    notes = {
        "data": str(args.data),
        "train_split": args.split,
        "val_split": args.val_split if val is not None else None,
        "train": asdict(cfg),
        "dataset_notes": train.notes,
        "seconds": round(result.seconds, 1),
    }
    card = save_model(
        model, args.out, classes=train.class_names, background=train.background,
        ambiguous=train.ambiguous, metrics=metrics, notes=notes,
    )  # fmt: skip
    out = Path(args.out)
    print(
        f"saved {out} and {out.with_suffix('.json')} (sha256 {card['sha256'][:12]}, {out.stat().st_size / 1e6:.2f} MB)"
    )
    if val is not None and result.history:
        curve = Path(args.curve) if args.curve else out.with_suffix(".curve.png")
        plot_training_curve(result.history, curve, title=f"{model.name} on {Path(args.data).name}")
        print(
            f"validation mAP {metrics['val_mAP']:.4f} (chance {metrics['val_chance_mAP']:.4f}), "
            f"mcAP {metrics['val_mcAP']:.4f}; curve: {curve}"
        )
    return 0
