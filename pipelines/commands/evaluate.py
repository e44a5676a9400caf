"""``costream evaluate``: per-frame mAP / mcAP of a saved model, regular and streamed continually."""

from __future__ import annotations

import argparse

HELP = "Per-frame mAP (THUMOS14 protocol) and mcAP (TVSeries) of a saved model; --continual streams it frame by frame."

# The streamed (continual) and windowed (regular) scores are the same function of the data; they
# differ by float rounding only (docs/continual-attention.md#exactness-conditions: ~1e-6 in float32), far below anything mAP resolves.
SCORE_TOL = 1e-3
MAP_TOL = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--data", required=True, help="dataset folder (.npz per video, or LSTR layout)"
    )
    parser.add_argument(
        "--weights", required=True, help="model.safetensors written by `costream train`"
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--continual",
        action="store_true",
        help="also stream the continual twin frame by frame and compare",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=64,
        help="videos streamed side by side (one state row each)",
    )
    parser.add_argument(
        "--plot", default=None, metavar="PNG", help="write a score timeline of one video"
    )
    parser.add_argument("--video", default=None, help="video for --plot (default: the first)")
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the metrics as JSON"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Evaluate; exit 1 if the continual and regular results disagree, 2 on bad input."""
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from costream.models.data import DataFormatError, load_dataset
    from costream.models.metrics import softmax
    from costream.models.synthetic import chance_map
    from costream.models.train import evaluate, predict_stream, predict_windows
    from costream.models.weights import WeightsError
    from costream.models.zoo import continual_from_regular, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, card = load_model(args.weights)
        ds = load_dataset(args.data, args.split)
    except (WeightsError, DataFormatError) as e:
        print(f"error: {e}")
        return 2
    if ds.feature_dim != model.config.d_in or ds.num_classes != model.config.classes:
        print(
            f"error: the model takes D_in={model.config.d_in} and predicts {model.config.classes} classes; "
            f"{ds.source} has D={ds.feature_dim} and {ds.num_classes} classes."
        )
        return 2
    n = model.window
    tag = f"{card['name']}@{card['sha256'][:12]}"
    scored = sum(max(0, len(v) - n + 1) for v in ds.videos)
    print(
        f"dataset   {ds.source}: {len(ds)} videos, {ds.num_frames:,} frames, {scored:,} with a full window (n={n})"
    )
    print(
        f"model     {tag}  (D_in={model.config.d_in}, C={model.config.classes}, {model.config.blocks} block(s))"
    )
    protocol = (
        "THUMOS14 (Ambiguous frames excluded)"
        if ds.ambiguous is not None
        else "TVSeries (no Ambiguous class)"
    )
    print(
        f"protocol  {protocol}; Background excluded from the means; chance mAP {chance_map(ds, n):.4f}"
    )
    regular = predict_windows(model, ds)
    m_reg = evaluate(regular, ds, n)
    print(
        f"regular   mAP {m_reg.mAP:.4f}  mcAP {m_reg.mcAP:.4f}  ({m_reg.frames:,} frames, {m_reg.excluded_frames:,} excluded)"
    )
    report = {"model": tag, "data": str(args.data), "split": args.split, "regular": m_reg.as_dict()}
    code = 0
    timeline = regular
    if args.continual:
        co = continual_from_regular(model)
        streamed = predict_stream(
            co, ds, max_streams=args.max_streams, progress=not args.no_progress
        )
        m_co = evaluate(streamed, ds, n)
        diff = max(
            (float(np.abs(a - b).max()) for a, b in zip(regular, streamed) if len(a)), default=0.0
        )
        d_map = abs(m_co.mAP - m_reg.mAP)
        ok = diff <= SCORE_TOL and d_map <= MAP_TOL
        print(
            f"continual mAP {m_co.mAP:.4f}  mcAP {m_co.mcAP:.4f}  (streamed frame by frame, {min(len(ds), args.max_streams)} streams side by side)"
        )
        print(
            f"agreement |dmAP| = {d_map:.1e}, max |dlogit| = {diff:.1e}: {'identical up to rounding' if ok else 'DISAGREE'}"
        )
        report |= {"continual": m_co.as_dict(), "max_abs_logit_diff": diff, "agree": ok}
        timeline = streamed
        code = 0 if ok else 1
    if args.plot:
        from costream.pipelines.plots import plot_score_timeline

        names = [v.name for v in ds.videos]
        i = names.index(args.video) if args.video in names else 0
        if args.video and args.video not in names:
            print(f"note: video {args.video!r} not in the split; plotting {names[0]}")
        v, z = ds.videos[i], timeline[i]
        keep = [c for c in range(ds.num_classes) if c != ds.ambiguous]
        probs = np.zeros_like(z, dtype=np.float64)
        probs[:, keep] = softmax(z[:, keep], axis=1)  # the protocol's scores
        skip = [c for c in (ds.background, ds.ambiguous) if c is not None]
        kind = "continual" if args.continual else "regular"
        plot_score_timeline(
            probs, ds.class_names, v.targets[n - 1 :], args.plot, first_frame=n - 1, skip=skip,
            ignored=v.targets[n - 1 :, ds.ambiguous] >= 0.5 if ds.ambiguous is not None else None,
            title=f"{v.name}: {tag} ({kind}); green: ground truth, grey: Ambiguous (ignored)",
        )  # fmt: skip
        print(f"plot      {args.plot} ({v.name})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return code
