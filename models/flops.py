"""Multiply-accumulates (MACs) per prediction, continual and regular (docs/continual-attention.md#macs-per-frame).

"FLOPs" in the Continual Transformers papers means MACs. Two conventions:

* ``"clean"``: matmuls only (biases, LayerNorm, activations, softmax and exp ignored). This
  is what the implementation here performs, and what ``torch.utils.flop_counter`` measures
  (it reports 2 FLOPs per MAC); :func:`measured_macs` runs that cross-check.
* ``"paper"``: the ptflops-based counts behind the paper's tables, artefacts included
  (bias counted once per linear, regular OadTR attention matmuls not counted, Q counted for all n
  tokens in the last layer, b2's last-layer FFN not counted, GELU counted). It reproduces
  CoOadTR-b1 = 9,598,998 MACs for D_in = 3072.

:func:`nystrom_macs` / :func:`continual_nystrom_macs` count Nyström attention (docs/continual-attention.md#macs-per-frame) and
:func:`macs_per_frame` counts a zoo model from its config. The GTZAN audio setting has its own ``"paper"`` convention (:func:`gtzan_macs`): ptflops 0.6.7 on
the reference audio model, whose channel-first linears are miscounted; it reproduces the paper's
51.5x for one block (docs/audio-setting.md). :func:`vggish_macs` counts the VGGish front-end; the tables
behind ``costream flops --table gtzan`` are in :mod:`costream.models.flops_tables`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .linear import set_packed_weights
from .nystrom import NystromOptions, parse_attention

if TYPE_CHECKING:
    from .configs import ModelConfig

__all__ = [
    "continual_nystrom_macs",
    "encoder_layer_macs",
    "encoder_macs",
    "gtzan_macs",
    "macs_per_frame",
    "measured_macs",
    "nystrom_encoder_macs_delta",
    "nystrom_macs",
    "oadtr_macs",
    "paper_single_output_macs",
    "vggish_macs",
]

LayerKind = Literal["regular", "single", "retroactive", "last"]
Convention = Literal["clean", "paper"]


def encoder_layer_macs(kind: LayerKind, *, d: int, n: int, f: int, h: int = 1) -> int:
    """Clean MACs of one encoder layer per prediction (clean convention).

    ``regular``: a full layer over the n-token window; ``single``: continual single-output;
    ``retroactive``: continual retroactive (all n rows); ``last``: the newest token's row against
    n freshly changed tokens (the last layer after a retroactive one). The last layer never
    projects those n rows: each of the ``h`` heads maps its query back through the key weights
    (d² over all heads), scores the n input rows and sums them in input space (2 n d per head),
    and projects that sum through the value weights once (d²): ``4 d² + 2 n h d + 2 d f`` with
    the query and output projections (``models/attention.py``, ``attend_last``).
    """
    if kind == "regular":
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * f
    if kind == "single":
        return 4 * d * d + 2 * n * d + 2 * d * f
    if kind == "retroactive":
        return 3 * d * d + 7 * n * d + n * d * d + 2 * n * d * f
    if kind == "last":
        return 4 * d * d + 2 * n * h * d + 2 * d * f
    raise ValueError(f"Unknown layer kind {kind!r}; choose regular, single, retroactive or last.")


def encoder_macs(*, layers: int, d: int, n: int, f: int, continual: bool, h: int = 1) -> int:
    """Clean MACs per prediction of an L-layer encoder (regular: every layer over the window).

    ``h`` (heads) matters only for the last layer of a continual encoder of 2 or more layers.
    """
    if layers < 1:
        raise ValueError(f"An encoder has at least one layer, got {layers}.")
    if not continual:
        return layers * encoder_layer_macs("regular", d=d, n=n, f=f)
    if layers == 1:
        return encoder_layer_macs("single", d=d, n=n, f=f)
    middle = (layers - 2) * encoder_layer_macs("regular", d=d, n=n, f=f)
    return (
        encoder_layer_macs("retroactive", d=d, n=n, f=f)
        + middle
        + encoder_layer_macs("last", d=d, n=n, f=f, h=h)
    )


def paper_single_output_macs(*, d: int, n: int, h: int, projected: int) -> int:
    """Paper-convention (ptflops) MACs of one single-output attention over a window of n tokens.

    ``3 projected d² + h (2 n d_h + 2 d_h) + d (d + 1)``: the Q, K, V projections of
    ``projected`` tokens (1 for a continual step, n in forward mode), each head's scores and
    weighted sum, and the out-projection with its bias.
    """
    dh = d // h
    return 3 * projected * d * d + h * (2 * n * dh + 2 * dh) + d * (d + 1)


def oadtr_macs(
    *,
    d_in: int,
    d_model: int,
    window: int,
    heads: int,
    ffn: int,
    classes: int,
    blocks: int,
    continual: bool,
    convention: Convention = "clean",
) -> int:
    """MACs per frame of an (Co)OadTR model: input linear, encoder, per-frame head.

    The regular model embeds and classifies all n tokens of each window (as OadTR does); the
    continual one embeds and classifies the new token only.

    Example:
        >>> oadtr_macs(d_in=3072, d_model=1024, window=64, heads=8, ffn=1024, classes=22,
        ...            blocks=1, continual=True, convention="paper")
        9598998
    """
    D, d, n, h, f, C, L = d_in, d_model, window, heads, ffn, classes, blocks
    if convention == "clean":
        tokens = 1 if continual else n
        enc = encoder_macs(layers=L, d=d, n=n, f=f, continual=continual, h=h)
        return tokens * D * d + enc + tokens * d * C
    if convention != "paper":
        raise ValueError(f"Unknown convention {convention!r}; choose 'clean' or 'paper'.")
    dh = d // h
    if not continual:
        layer = 3 * n * d * d + (n * d * d + d) + (n * d * f + f) + (n * f * d + d) + n * f
        return (n * D * d + d) + L * layer + (n * d * C + C)
    embed_head = (D * d + d) + (d * C + C)
    single_attn = paper_single_output_macs(d=d, n=n, h=h, projected=1)
    if L == 1:
        return embed_head + single_attn + (d * f + f) + (f * d + d) + 2 * f
    if L == 2:
        retro = (
            3 * d * d
            + h * (7 * n * dh + 2 * n - 3 * dh)
            + n * d * (d + 1)
            + 2 * n * (d * f + f)
            + n * f
        )
        last = paper_single_output_macs(d=d, n=n, h=h, projected=n)
        return embed_head + retro + last
    raise ValueError(
        "The paper convention covers 1 and 2 continual blocks only; use convention='clean'."
    )


def gtzan_macs(
    *,
    d_in: int,
    d_model: int,
    window: int,
    heads: int,
    ffn: int,
    classes: int,
    blocks: int,
    continual: bool,
    convention: Convention = "clean",
) -> int:
    """MACs per prediction of the GTZAN models (docs/audio-setting.md).

    ``"clean"`` is :func:`oadtr_macs`'s clean count (the same network). ``"paper"`` is what
    ptflops 0.6.7 reports for the reference audio model (``continual_transformers``' CoSi/CoRe
    hooks, ``continual`` 0.15.3; Atamarado/continual_nystrom
    ``audio_classification/continual_transformer_audio_classification.ipynb``):

    * Its linears are ``co.Linear(..., channel_dim=1)`` on (1, C, T) tensors, and ptflops counts
      ``prod(input shape) * output.shape[-1] + output.shape[-1]``: the last dim is T, not the
      output channels. So the regular model's embedding counts D n^2 + n (not n D d + d) and its
      FFN and head, which see one token (1, C, 1), count C + 1 each. A continual step feeds
      (1, C) tensors and is counted correctly.
    * The regular model is the same single-output encoder in forward mode: attention hooks count
      3 n d^2 (Q, K, V for all n tokens), h (2 n d_h + 2 d_h) and d (d + 1) for the out-projection.
    * GELU and LayerNorm count nothing (ptflops 0.6.7 maps neither).

    One block gives 15,198,459 / 294,922 = 51.53x at the paper's sizes, the paper's 51.5x. The
    two-block count follows the same rules plus CoOadTR-b2's (last layer counted in forward mode,
    its FFN not counted); no GTZAN two-block number was available to check it against.

    Example:
        >>> gtzan_macs(d_in=128, d_model=192, window=120, heads=16, ffn=192, classes=10,
        ...            blocks=1, continual=True, convention="paper")
        294922
    """
    D, d, n, h, f, C, L = d_in, d_model, window, heads, ffn, classes, blocks
    if convention == "clean":
        return oadtr_macs(
            d_in=D, d_model=d, window=n, heads=h, ffn=f, classes=C, blocks=L,
            continual=continual, convention="clean",
        )  # fmt: skip
    if convention != "paper":
        raise ValueError(f"Unknown convention {convention!r}; choose 'clean' or 'paper'.")
    if L not in (1, 2):
        raise ValueError("The paper convention covers 1 and 2 blocks only; use convention='clean'.")
    dh = d // h
    single_fwd = paper_single_output_macs(d=d, n=n, h=h, projected=n)  # CoSi, forward mode
    token_ffn = (d * f + f) + (f * d + d)  # FFN of one (1, d) token, counted correctly
    if not continual:
        embed = D * n * n + n  # channel-first artefact: prod((1, D, n)) * n + n
        tail = (d + 1) + (f + 1) + (d + 1)  # last FFN and head on (1, C, 1): C + 1 each
        if L == 1:
            return embed + single_fwd + tail
        retro_fwd = 3 * n * d * d + h * (2 * n * n * dh + 2 * n * dh) + n * d * (d + 1)
        return embed + retro_fwd + n * token_ffn + single_fwd + tail
    embed_head = (D * d + d) + (d * C + C)
    if L == 1:
        single_step = paper_single_output_macs(d=d, n=n, h=h, projected=1)
        return embed_head + single_step + token_ffn
    retro_step = 3 * d * d + h * (7 * n * dh + 2 * n - 3 * dh) + n * d * (d + 1)
    return embed_head + retro_step + n * token_ffn + single_fwd


def vggish_macs(
    channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512),
    fc: tuple[int, ...] = (4096, 4096),
    embedding: int = 128,
    frames: int = 96,
    mels: int = 64,
) -> int:
    """MACs of one VGGish embedding (clean: conv and FC matmuls), default 863,895,552.

    ``channels`` are the six 3x3 convolutions (pools after the 1st, 2nd, 4th and 6th), ``fc`` the
    hidden fully connected sizes; the input is one (frames, mels) log-mel patch.
    """
    H, W, c_in, total = frames, mels, 1, 0
    for i, c in enumerate(channels):
        total += H * W * c * c_in * 9
        c_in = c
        if i in (0, 1, 3, 5):
            H, W = H // 2, W // 2
    width = H * W * c_in
    for out in (*fc, embedding):
        total += width * out
        width = out
    return total


# -- Nyström attention (attention part only, all heads) ---------------------------------------
def nystrom_macs(
    n: int, d: int, h: int, m: int, pinv_iters: int = 6, rows: int | None = None
) -> int:
    """Regular Nyström attention over a window of n tokens, ``rows`` outputs (default n).

    4 n m d + h n m² + m² d + 4 k h m³ for all n rows (with k = 6 Newton-Schulz iterations;
    the exact pinv is counted the same, nominally). With one output row the F and output terms
    shrink to 1 row: (2 n + 2) m d + h m² + m² d + 4 k h m³.
    """
    r = n if rows is None else rows
    return 2 * n * m * d + 2 * r * m * d + h * r * m * m + m * m * d + 4 * pinv_iters * h * m**3


def continual_nystrom_macs(
    n: int,
    d: int,
    h: int,
    m: int,
    retroactive: bool = False,
    landmark_mode: str = "continual",
    pinv_iters: int = 6,
) -> float:
    """Per-step MACs of continual Nyström attention (all heads).

    Amortised over the s = n/m schedule for continual landmarks; the formulas of docs/continual-attention.md#macs-per-frame::

        single, fixed:       7 m d + h m²
        retroactive, fixed:  n m d + 7 m d + h m²
        continual landmarks: + (m/n)(2 n d + 2 m d + m² d + 4 k h m³)   [+ (m/n)(n m d + h n m²) retro]

    (This implementation recomputes A from the landmarks, m² d, instead of updating it with a new
    row and column, 2 m d; the formula keeps both terms, an upper bound by 2 m d.)
    """
    fixed = 7 * m * d + h * m * m + (n * m * d if retroactive else 0)
    if landmark_mode == "fixed":
        return float(fixed)
    update = 2 * n * d + 2 * m * d + m * m * d + 4 * pinv_iters * h * m**3
    if retroactive:
        update += n * m * d + h * n * m * m
    return fixed + m / n * update


def nystrom_encoder_macs_delta(
    *, layers: int, n: int, d: int, h: int, continual: bool, options: NystromOptions
) -> float:
    """Per-frame MACs of an encoder's Nyström attention minus its softmax attention (clean convention).

    Add it to a softmax encoder count (:func:`encoder_macs`) to count the Nyström variant:
    regular layers swap 2 n² d for :func:`nystrom_macs`; a continual single-output first layer swaps
    2 n d, a retroactive one 7 n d, for :func:`continual_nystrom_macs`; the last layer after a
    retroactive one runs a one-row Nyström over the window, with the keys and values of all n rows
    projected (2 n d² + 2 d² + 2 d f besides), in place of softmax's projection-free last layer
    (``encoder_layer_macs("last")``). ``options.pinv`` is counted as the iteration either way
    (nominal for the exact pinv).
    """
    m, k, mode = options.landmarks, options.pinv_iters, options.landmark_mode
    full = nystrom_macs(n, d, h, m, k) - 2 * n * n * d
    if not continual:
        return layers * full
    if layers == 1:
        return continual_nystrom_macs(n, d, h, m, False, mode, k) - 2 * n * d
    first = continual_nystrom_macs(n, d, h, m, True, mode, k) - 7 * n * d
    f = 0  # the FFN terms cancel: both last layers run it on one row
    softmax_last = encoder_layer_macs("last", d=d, n=n, f=f, h=h)
    nystrom_last = 2 * n * d * d + 2 * d * d + nystrom_macs(n, d, h, m, k, rows=1)
    return first + (layers - 2) * full + nystrom_last - softmax_last


# -- a zoo model, from its config -------------------------------------------------------------
def macs_per_frame(
    config: ModelConfig, *, continual: bool, convention: Convention = "paper"
) -> int:
    """MACs per frame (docs/continual-attention.md#macs-per-frame) of a zoo model: embedding + encoder + head.

    The OadTR family supports the paper's counting convention (``"paper"``, reproduces
    CoOadTR-b1 = 9,598,998 for D_in = 3072) and the clean one (``"clean"``, matmuls only); so does
    the GTZAN family (its ``"paper"`` count reproduces the papers' 51.5x for one block,
    :func:`gtzan_macs`; the VGGish front-end is not included, :func:`vggish_macs`). GTZAN
    models with Nyström attention are counted with the clean convention: the paper's regular
    count holds no n^2 attention term for the Nyström one to replace. The
    audio family is counted with the clean convention (its conv front-end is not in the paper);
    ``convention="paper"`` falls back to it.
    """
    c = config
    kind, options = parse_attention(c.attention, c.window)
    nystrom = 0  # Nyström attention replaces the softmax attention terms (clean convention)
    if kind == "nystrom":
        nystrom = round(nystrom_encoder_macs_delta(
            layers=c.blocks, n=c.window, d=c.d_model, h=c.heads, continual=continual,
            options=NystromOptions(**options),
        ))  # fmt: skip
    if c.family == "oadtr":
        return nystrom + oadtr_macs(
            d_in=c.d_in, d_model=c.d_model, window=c.window, heads=c.heads, ffn=c.ffn,
            classes=c.classes, blocks=c.blocks, continual=continual, convention=convention,
        )  # fmt: skip
    if c.family == "gtzan":
        if kind == "nystrom":
            convention = "clean"
        return nystrom + gtzan_macs(
            d_in=c.d_in, d_model=c.d_model, window=c.window, heads=c.heads, ffn=c.ffn,
            classes=c.classes, blocks=c.blocks, continual=continual, convention=convention,
        )  # fmt: skip
    tokens = 1 if continual else c.window  # regular: every token of the window is embedded
    enc = encoder_macs(
        layers=c.blocks, d=c.d_model, n=c.window, f=c.ffn, continual=continual, h=c.heads
    )
    return nystrom + tokens * c.embedding_macs() + enc + tokens * c.d_model * c.classes


def measured_macs(fn: Callable[[], object]) -> int:
    """MACs of the matmuls ``fn()`` runs, measured by ``torch.utils.flop_counter`` (FLOPs / 2).

    Note: ``torch.nn.TransformerEncoder`` under ``no_grad`` in eval mode takes a fused "fast path"
    kernel the counter cannot see; measure it with gradients enabled.
    """
    _register_cpu_sdpa()
    previous = set_packed_weights(False)  # the counter sees aten's products, not oneDNN's
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        set_packed_weights(previous)
    return counter.get_total_flops() // 2


_SDPA_CPU_REGISTERED = False


def _register_cpu_sdpa() -> None:
    """Teach the flop counter the CPU flash-attention kernel (torch registers only GPU ones)."""
    global _SDPA_CPU_REGISTERED
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if _SDPA_CPU_REGISTERED or op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _sdpa_cpu(
        query_shape: tuple[int, ...],
        key_shape: tuple[int, ...],
        value_shape: tuple[int, ...],
        *args: object,
        out_shape: tuple[int, ...] | None = None,
        **kwargs: object,
    ) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    _SDPA_CPU_REGISTERED = True
