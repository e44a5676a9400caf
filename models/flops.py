"""Multiply-accumulates (MACs) per prediction, continual and regular (docs §8).

"FLOPs" in the Continual Transformers papers means MACs. Two conventions:

* ``"clean"`` (§8.1): matmuls only (biases, LayerNorm, activations, softmax and exp ignored). This
  is what the implementation here performs, and what ``torch.utils.flop_counter`` measures
  (it reports 2 FLOPs per MAC); :func:`measured_macs` runs that cross-check.
* ``"paper"`` (§8.2): the ptflops-based counts behind the paper's tables, artefacts included
  (bias counted once per linear, regular OadTR attention matmuls not counted, Q counted for all n
  tokens in the last layer, b2's last-layer FFN not counted, GELU counted). It reproduces
  CoOadTR-b1 = 9,598,998 MACs for D_in = 3072.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["encoder_layer_macs", "encoder_macs", "measured_macs", "oadtr_macs"]

LayerKind = Literal["regular", "single", "retroactive", "last"]
Convention = Literal["clean", "paper"]


def encoder_layer_macs(kind: LayerKind, *, d: int, n: int, f: int) -> int:
    """Clean MACs of one encoder layer per prediction (§8.1).

    ``regular``: a full layer over the n-token window; ``single``: continual single-output;
    ``retroactive``: continual retroactive (all n rows); ``last``: the newest token's row against
    keys/values of n freshly changed tokens (the last layer after a retroactive one).
    """
    if kind == "regular":
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * f
    if kind == "single":
        return 4 * d * d + 2 * n * d + 2 * d * f
    if kind == "retroactive":
        return 3 * d * d + 7 * n * d + n * d * d + 2 * n * d * f
    if kind == "last":
        return 2 * n * d * d + 2 * d * d + 2 * n * d + 2 * d * f
    raise ValueError(f"Unknown layer kind {kind!r}; choose regular, single, retroactive or last.")


def encoder_macs(*, layers: int, d: int, n: int, f: int, continual: bool) -> int:
    """Clean MACs per prediction of an L-layer encoder (regular: every layer over the window)."""
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
        + encoder_layer_macs("last", d=d, n=n, f=f)
    )


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
        enc = encoder_macs(layers=L, d=d, n=n, f=f, continual=continual)
        return tokens * D * d + enc + tokens * d * C
    if convention != "paper":
        raise ValueError(f"Unknown convention {convention!r}; choose 'clean' or 'paper'.")
    dh = d // h
    if not continual:
        layer = 3 * n * d * d + (n * d * d + d) + (n * d * f + f) + (n * f * d + d) + n * f
        return (n * D * d + d) + L * layer + (n * d * C + C)
    embed_head = (D * d + d) + (d * C + C)
    single_attn = 3 * d * d + h * (2 * n * dh + 2 * dh) + d * (d + 1)
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
        last = 3 * n * d * d + h * (2 * n * dh + 2 * dh) + d * (d + 1)
        return embed_head + retro + last
    raise ValueError(
        "The paper convention covers 1 and 2 continual blocks only; use convention='clean'."
    )


def measured_macs(fn: Callable[[], object]) -> int:
    """MACs of the matmuls ``fn()`` runs, measured by ``torch.utils.flop_counter`` (FLOPs / 2).

    Note: ``torch.nn.TransformerEncoder`` under ``no_grad`` in eval mode takes a fused "fast path"
    kernel the counter cannot see; measure it with gradients enabled.
    """
    _register_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


_SDPA_CPU_REGISTERED = False


def _register_cpu_sdpa() -> None:
    """Teach the flop counter the CPU flash-attention kernel (torch registers only GPU ones)."""
    global _SDPA_CPU_REGISTERED
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if _SDPA_CPU_REGISTERED or op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    _SDPA_CPU_REGISTERED = True
