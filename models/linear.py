"""Matrix products of the continual step: oneDNN's prepacked weights where they pay, on CPU.

torch's float32 ``F.linear`` on x86 goes to MKL's sgemm, which re-packs the weight into its
blocked panels on every call; oneDNN (bundled with torch) multiplies by a weight packed once.
Measured here (2-core AMD EPYC, 1 thread, 1024 x 1024 weights that do not stay in the caches
between uses, as in a step of the paper configuration): 2-8 rows 1.05-2.2x, 64 rows 1.39x, 512
and more rows 1.14-1.18x faster; one row (a matrix-vector product) the same either way; and for
small weights (64 x 64, the demo model) oneDNN's ~10 us per call makes it 2-4x slower. Hence
:func:`linear` packs only float32 CPU weights of at least ``PACK_MIN_ELEMENTS`` elements
multiplied by at least ``PACK_MIN_ROWS`` rows, with gradients off (the packed op has no autograd:
training and the regular oracle keep ``F.linear``), and falls back to ``F.linear`` otherwise.

A packed copy is cached per weight (parameters and views of them, e.g. one third of an
in-projection), keyed by the tensor's storage, shape, strides and version counter, so
``load_state_dict`` and ``.to()`` (which bump or replace them) never leave a stale copy; it
costs one more copy of each packed weight in memory. ``COSTREAM_PACKED_WEIGHTS=0`` (read at
import) or :func:`set_packed_weights` turns packing off, e.g. to measure without it.

Fusions: the activation (relu, exact gelu) runs inside the product, and so does a residual
addition (``residual + x W^T + b``); both equal the unfused forms within float32 rounding
(tests/models/test_linear.py).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PACK_MIN_ELEMENTS",
    "PACK_MIN_ROWS",
    "linear",
    "packed_weights",
    "rowdot",
    "set_packed_weights",
]

PACK_MIN_ELEMENTS = 1 << 18  # a 512 x 512 weight; 64 x 64 is slower packed (above)
PACK_MIN_ROWS = 2  # one row is a matrix-vector product: no gain from packing
_ROWS_HINT = 64  # the batch size oneDNN lays the packed weight out for (measured best 64-512)

_ops: Any = getattr(torch.ops, "mkldnn", None)
_AVAILABLE = (
    torch.backends.mkldnn.is_available()
    and hasattr(_ops, "_linear_pointwise")
    and hasattr(_ops, "_reorder_linear_weight")
)
_enabled = _AVAILABLE and os.environ.get("COSTREAM_PACKED_WEIGHTS", "1") != "0"

# oneDNN post-op names of the activations nn.TransformerEncoderLayer takes by name
_FUSED: dict[Callable[[Tensor], Tensor], tuple[str, list[object], str]] = {
    F.relu: ("relu", [], ""),
    F.gelu: ("gelu", [], "none"),  # "none": the exact (erf) form, F.gelu's default
}

# id(base parameter) -> (weakref to it, {(data_ptr, shape, stride): (version, packed)})
_PACKS: dict[int, tuple[weakref.ref[Tensor], dict[tuple[object, ...], tuple[int, Tensor]]]] = {}


def packed_weights() -> bool:
    """Whether :func:`linear` may use packed weights (oneDNN present and not turned off)."""
    return _enabled


def set_packed_weights(enabled: bool) -> bool:
    """Turn packed weights on or off for this process; returns the previous setting.

    Turning them on where oneDNN is missing leaves them off.
    """
    global _enabled
    previous, _enabled = _enabled, bool(enabled) and _AVAILABLE
    return previous


def _packed(w: Tensor) -> Tensor:
    """``w`` (out, in) packed for oneDNN, cached until its storage or contents change."""
    base = w if w._base is None else w._base
    entry = _PACKS.get(id(base))
    if entry is None or entry[0]() is not base:
        ident = id(base)

        def forget(_: object, ident: int = ident) -> None:
            _PACKS.pop(ident, None)

        entry = (weakref.ref(base, forget), {})
        _PACKS[ident] = entry
    views = entry[1]
    key = (w.data_ptr(), tuple(w.shape), w.stride())
    version = w._version
    hit = views.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    packed = _ops._reorder_linear_weight(w.detach(), _ROWS_HINT)
    views[key] = (version, packed)
    return packed


def _packable(x: Tensor, w: Tensor) -> bool:
    return (  # the weight's size first: the demo model's products stop at the first test
        w.numel() >= PACK_MIN_ELEMENTS
        and _enabled
        and w.dtype == torch.float32
        and x.dtype == torch.float32
        and w.device.type == "cpu"
        and x.device.type == "cpu"
        and x.numel() >= PACK_MIN_ROWS * w.shape[1]
        and not torch.is_grad_enabled()
    )


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: Callable[[Tensor], Tensor] | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """``activation(x W^T + b)``, or ``residual + x W^T + b``: (..., in) -> (..., out).

    At most one of ``activation`` and ``residual``. Same function as the ``F.linear`` forms
    within float32 rounding, whichever kernel runs (module docstring).
    """
    if activation is not None and residual is not None:
        raise ValueError("linear fuses an activation or a residual addition, not both.")
    if _packable(x, weight):
        packed = _packed(weight)
        if residual is not None:
            return _ops._linear_pointwise.binary(x, residual, packed, bias, "add")
        if activation is None:
            return _ops._linear_pointwise(x, packed, bias, "none", [], "")
        fused = _FUSED.get(activation)
        if fused is not None:
            return _ops._linear_pointwise(x, packed, bias, *fused)
        return activation(_ops._linear_pointwise(x, packed, bias, "none", [], ""))
    if residual is not None and weight.numel() < PACK_MIN_ELEMENTS:
        return residual + F.linear(x, weight, bias)  # small: fewer calls beat one fewer pass
    if residual is not None:  # one product writing residual + x W^T: a pass over the rows less
        shape = (*x.shape[:-1], weight.shape[0])
        y = torch.addmm(
            residual.reshape(-1, weight.shape[0]), x.reshape(-1, x.shape[-1]), weight.t()
        )
        if bias is not None:
            y += bias
        return y.view(shape)
    y = F.linear(x, weight, bias)
    return y if activation is None else activation(y)


_ROWDOT_CHUNK = 1 << 21  # elements of the product per chunk: a bounded temporary


def rowdot(Q: Tensor, k: Tensor) -> Tensor:
    """``(Q @ k.unsqueeze(-1)).squeeze(-1)``: each row of Q dotted with its batch's vector.

    ``Q`` (..., r, d), ``k`` (..., d) -> (..., r). A multiply and a sum: torch's batched
    matrix-vector product is 2-6x slower on these shapes (1 thread: 71 vs 15 us for
    (1, 8, 64, 128), 4.2 vs 1.9 ms for (64, 8, 64, 128)); the product is taken in chunks of the
    leading dimension so the temporary stays small (at (256, 8, 64, 128) one 64 MB temporary made
    it 2x slower than the matrix-vector product).
    """
    if Q.dim() <= 2 or Q.numel() <= _ROWDOT_CHUNK:
        return (Q * k.unsqueeze(-2)).sum(-1)
    step = max(1, _ROWDOT_CHUNK // Q[0].numel())  # leading rows per chunk
    out = Q.new_empty(Q.shape[:-1])
    for i in range(0, Q.shape[0], step):
        torch.sum(Q[i : i + step] * k[i : i + step].unsqueeze(-2), -1, out=out[i : i + step])
    return out
