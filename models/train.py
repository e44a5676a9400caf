"""Train a regular zoo model on windows; evaluate it regularly and as a continual stream.

Training follows the CoOadTR recipe (docs/continual-attention.md#the-oad-model-and-its-protocol) with small-model-friendly defaults: windows of
n frames end at random frames of random training videos (stride 1 over all frames with index
>= n-1; windows whose last frame is Ambiguous are skipped), the loss is soft-target cross-entropy
on the last frame's label with per-class weights (frequent Background weighs less), AdamW with a
linear warm-up then cosine decay, gradient clipping, and a random positional phase per window so
the model does not depend on where a stream started (docs/continual-attention.md#positional-phase).

Evaluation scores every frame that has a full window behind it (frames n-1 … T-1 of each video,
as the continual warm-up and the THUMOS14 protocol): :func:`predict_windows` runs the regular model on each
window with the phase the stream would give it, :func:`predict_stream` steps the continual twin
frame by frame over all videos at once (one stream row per video), and :func:`evaluate`
computes mAP / mcAP (models/metrics.py) from either.

Example:
    >>> from costream.models.synthetic import SyntheticConfig, make_dataset
    >>> from costream.models.zoo import get_model
    >>> ds = make_dataset(SyntheticConfig(num_videos=4))
    >>> model = get_model("oadtr_b1", d_in=ds.feature_dim, classes=ds.num_classes, d_model=32,
    ...                   window=8, heads=2, ffn=32, pe_size=15)
    >>> result = train_model(model, ds, ds, TrainConfig(steps=20, eval_every=10, progress=False))
    >>> [h["step"] for h in result.history]
    [10, 20]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import OadDataset
from .metrics import FrameMetrics, frame_metrics
from .protocol import ContinualModel

if TYPE_CHECKING:
    from .online import OnlineTransformer

__all__ = [
    "TrainConfig",
    "TrainResult",
    "check_continual",
    "class_weights",
    "evaluate",
    "predict_stream",
    "predict_windows",
    "train_model",
]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (CoOadTR used Adam 1e-4, batch 128, clip 1.0 for d = 1024)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    grad_clip: float = 1.0
    class_weighting: str = "sqrt-inverse"  # "sqrt-inverse" | "inverse" | "none"
    eval_every: int = 100
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainResult:
    """Validation curve (one dict per evaluation) and the final validation metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# -- windows ---------------------------------------------------------------------------------------
class _Windows:
    """All training windows of a dataset as (global end index) into one concatenated array."""

    def __init__(self, ds: OadDataset, n: int, device: torch.device) -> None:
        self.x = torch.from_numpy(np.concatenate([v.features for v in ds.videos])).to(device)
        self.y = torch.from_numpy(np.concatenate([v.targets for v in ds.videos])).to(device)
        starts = np.cumsum([0] + [len(v) for v in ds.videos[:-1]])
        ends = [s + np.arange(n - 1, len(v)) for s, v in zip(starts, ds.videos)]
        end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        if ds.ambiguous is not None:
            end = end[self.y[torch.from_numpy(end), ds.ambiguous].cpu().numpy() < 0.5]
        if len(end) == 0:
            raise ValueError(f"No training windows: every video is shorter than the window n={n}.")
        self.end = torch.from_numpy(end).to(device)
        self.offsets = torch.arange(-n + 1, 1, device=device)  # (n,)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        g = self.end[idx]  # (B,) global index of each window's last frame
        return self.x[g[:, None] + self.offsets], self.y[g]  # (B, n, D), (B, C)


def class_weights(ds: OadDataset, window: int, mode: str = "sqrt-inverse") -> Tensor:
    """Per-class loss weights from the last-frame label frequencies of the training windows.

    ``inverse``: ``w_c = mean_f / f_c``; ``sqrt-inverse``: its square root (milder);
    ``none``: ones. Classes that never occur get weight 1; Ambiguous gets 0. Normalised so the
    average weight of an example is 1.
    """
    y = np.concatenate([v.targets[window - 1 :] for v in ds.videos]).astype(np.float64)
    C = y.shape[1]
    if mode == "none":
        w = np.ones(C)
    elif mode in ("inverse", "sqrt-inverse"):
        f = y.sum(0) / max(len(y), 1)
        present = f > 0
        w = np.ones(C)
        w[present] = f[present].mean() / f[present]
        if mode == "sqrt-inverse":
            w = np.sqrt(w)
    else:
        raise ValueError(f"Unknown class weighting {mode!r}; choose sqrt-inverse, inverse or none.")
    if ds.ambiguous is not None:
        w[ds.ambiguous] = 0.0
    mean_w = (y @ w).sum() / max(y.sum(), 1)
    return torch.tensor(w / mean_w if mean_w > 0 else w, dtype=torch.float32)


def _soft_ce(logits: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    target = target / target.sum(1, keepdim=True).clamp_min(1e-12)  # multi-hot -> distribution
    logp = F.log_softmax(logits.float(), dim=1)
    wt = target * weight if weight is not None else target
    return -(wt * logp).sum(1).mean()


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# -- training --------------------------------------------------------------------------------------
def train_model(
    model: OnlineTransformer,
    train: OadDataset,
    val: OadDataset | None = None,
    cfg: TrainConfig = TrainConfig(),
) -> TrainResult:
    """Train a regular zoo model (``OnlineTransformer``) in place; returns the validation curve.

    Deterministic for a given ``cfg.seed`` (window sampling, positional phases, dropout) on CPU.
    """
    from tqdm.auto import tqdm

    n, M = model.window, model.config.pe_size
    if train.feature_dim != model.config.d_in or train.num_classes != model.config.classes:
        raise ValueError(
            f"Model expects D_in={model.config.d_in}, C={model.config.classes}; the training data "
            f"has D={train.feature_dim}, C={train.num_classes}."
        )
    device = torch.device(cfg.device)
    model.to(device)
    torch.manual_seed(cfg.seed)  # dropout masks
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    windows = _Windows(train, n, device)
    weight = class_weights(train, n, cfg.class_weighting).to(device)
    decay = [p for name, p in model.named_parameters() if p.dim() > 1 and "pe." not in name]
    no_decay = [
        p for name, p in model.named_parameters() if not (p.dim() > 1 and "pe." not in name)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    result = TrainResult()
    t0 = time.perf_counter()
    bar = tqdm(
        range(1, cfg.steps + 1),
        desc=f"train {model.name or 'model'}",
        disable=not cfg.progress,
        unit="step",
    )
    running = None
    for step in bar:
        model.train()
        idx = torch.randint(len(windows.end), (cfg.batch_size,), generator=gen).to(device)
        start = torch.randint(M, (cfg.batch_size,), generator=gen).to(device)
        x, y = windows.batch(idx)
        loss = _soft_ce(model(x, start), y, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if val is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            m, val_loss = _validate(model, val)
            result.history.append(
                {
                    "step": step,
                    "train_loss": running,
                    "val_loss": val_loss,
                    "val_mAP": m.mAP,
                    "val_mcAP": m.mcAP,
                }
            )
            bar.set_postfix(loss=f"{running:.3f}", val_mAP=f"{m.mAP:.3f}")
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{running:.3f}")
    model.eval()
    if val is not None:
        last = result.history[-1]
        result.final = {
            "val_mAP": last["val_mAP"],
            "val_mcAP": last["val_mcAP"],
            "val_loss": last["val_loss"],
        }
    result.final["train_loss"] = running if running is not None else math.nan
    result.seconds = time.perf_counter() - t0
    return result


def _validate(model: OnlineTransformer, ds: OadDataset) -> tuple[FrameMetrics, float]:
    logits = predict_windows(model, ds)
    m = evaluate(logits, ds, model.window)
    z = torch.from_numpy(np.concatenate(logits))
    y = torch.from_numpy(np.concatenate([v.targets[model.window - 1 :] for v in ds.videos]))
    if ds.ambiguous is not None:
        keep = y[:, ds.ambiguous] < 0.5
        z, y = z[keep], y[keep]
    return m, float(_soft_ce(z, y, None)) if len(z) else math.nan


# -- prediction ------------------------------------------------------------------------------------
@torch.no_grad()
def predict_windows(
    model: OnlineTransformer, ds: OadDataset, batch_size: int = 128, first_index: int = 0
) -> list[np.ndarray]:
    """Regular model over every full window: per video, logits (T - n + 1, C) for frames n-1 … T-1.

    Window ending at frame t (0-based) starts at t - n + 1; its positional phase is the frame
    index of that first frame, ``first_index + t - n + 1``, where ``first_index`` is the index of
    the video's first frame in its stream (what a continual stream gives it).
    """
    was_training = model.training
    model.eval()
    n = model.window
    p = next(model.parameters())
    out = []
    for v in ds.videos:
        T = len(v)
        if T < n:
            out.append(np.zeros((0, model.config.classes), dtype=np.float32))
            continue
        x = torch.from_numpy(v.features).to(p.device, p.dtype)
        w = x.unfold(0, n, 1).transpose(1, 2)  # (T-n+1, n, D)
        chunks = [
            model(
                w[s : s + batch_size],
                first_index + torch.arange(s, min(s + batch_size, T - n + 1), device=p.device),
            )
            for s in range(0, T - n + 1, batch_size)
        ]
        out.append(torch.cat(chunks).float().cpu().numpy())
    model.train(was_training)
    return out


@torch.no_grad()
def predict_stream(
    model: ContinualModel,
    ds: OadDataset,
    max_streams: int = 64,
    progress: bool = False,
    first_index: int = 0,
) -> list[np.ndarray]:
    """Continual model stepped frame by frame, one stream row per video (up to ``max_streams`` at once).

    Returns, per video, the logits of the warm steps: (T - n + 1, C) for frames n-1 … T-1 (the
    same frames as :func:`predict_windows`). Frame t of each video has stream index
    ``first_index + t``, which sets its positional phase.
    """
    from tqdm.auto import tqdm

    p = next(model.parameters())
    out: list[np.ndarray] = [np.zeros(0)] * len(ds.videos)
    total = sum(len(v) for v in ds.videos)
    bar = tqdm(total=total, desc="stream", unit="frame", disable=not progress)
    for g0 in range(0, len(ds.videos), max_streams):
        group = ds.videos[g0 : g0 + max_streams]
        B, T = len(group), max(len(v) for v in group)
        state = model.init_state(B)
        scores = []
        warm = []
        chunk = 256  # frames staged at a time: (B, chunk, D), not the whole (B, T, D) videos
        for t in range(T):
            if t % chunk == 0:
                x = torch.zeros(B, chunk, ds.feature_dim, dtype=p.dtype, device=p.device)
                for b, v in enumerate(
                    group
                ):  # finished rows step on zeros; their outputs are dropped
                    part = torch.from_numpy(v.features[t : t + chunk])
                    x[b, : len(part)] = part
            index = torch.full((B,), first_index + t, dtype=torch.int64)
            o, state = model.step(x[:, t % chunk], state, index)
            scores.append(o.scores.float().cpu())
            warm.append(o.warm.cpu())
            bar.update(sum(1 for v in group if t < len(v)))
        s = torch.stack(scores, 1)  # (B, T, C)
        w = torch.stack(warm, 1)  # (B, T)
        for b, v in enumerate(group):
            keep = w[b, : len(v)]
            out[g0 + b] = s[b, : len(v)][keep].numpy()
    bar.close()
    return out


def evaluate(logits: list[np.ndarray], ds: OadDataset, window: int) -> FrameMetrics:
    """Compute mAP / mcAP of per-video logits for frames window-1 … T-1 (THUMOS protocol if Ambiguous exists)."""
    z = np.concatenate([lg.reshape(-1, ds.num_classes) for lg in logits])
    y = np.concatenate([v.targets[window - 1 :] for v in ds.videos])
    if len(z) != len(y):
        raise ValueError(f"{len(z)} scored frames for {len(y)} frames with a full window.")
    return frame_metrics(
        z, y, background=ds.background, ambiguous=ds.ambiguous, class_names=ds.class_names
    )


def check_continual(
    model: OnlineTransformer, ds: OadDataset, tol: float = 1e-6
) -> dict[str, float]:
    """Validation metrics of a trained regular model and of its continual twin, which must agree.

    Returns ``val_mAP``, ``val_mcAP`` (regular, over windows), ``val_mAP_continual`` (streamed
    frame by frame) and ``val_chance_mAP``; raises ``ValueError`` if the two mAPs differ by more
    than ``tol`` (the continual model is exact, so they differ only by rounding).
    """
    from .synthetic import chance_map

    n = model.window
    regular = evaluate(predict_windows(model, ds), ds, n)
    continual = evaluate(predict_stream(model.to_continual(), ds), ds, n)
    if abs(regular.mAP - continual.mAP) > tol:
        raise ValueError(f"Continual mAP {continual.mAP} differs from regular {regular.mAP}.")
    return {
        "val_mAP": regular.mAP,
        "val_mcAP": regular.mcAP,
        "val_mAP_continual": continual.mAP,
        "val_chance_mAP": chance_map(ds, n),
    }
