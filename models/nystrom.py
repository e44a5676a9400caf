"""Continual Nyström attention (Carreto Picón et al., arXiv 2412.03214).

Nyström attention (Xiong et al. 2021; docs/continual-attention.md#nyström-attention) replaces the n×n softmax
with m landmark queries and keys Q̃, K̃ (m×d_h per head)::

    F = softmax(Q̂ K̃ᵀ)   (n×m)     A = softmax(Q̃ K̃ᵀ)   (m×m)     G = softmax(Q̃ K̂ᵀ) V   (m×d_h)
    O = F · A⁺ · G

with q̂ = q d_h^-1/4 and k̂ = k d_h^-1/4 (so q̂·k̂ = q·k/√d_h). Landmarks are either *continual*
(segment means of the window: m consecutive segments of s = n/m tokens) or *fixed* (given or
learned parameters). A⁺ is the exact pseudo-inverse or the Newton-Schulz iteration of
Nyströmformer, its initial scaling taken per matrix, i.e. per (stream, head), never across the
batch.

Continual form (docs/continual-attention.md#continual-nyström): G = diag(z)⁻¹ E with z_i = Σ_j exp(q̃_i·k̂_j), E_i = Σ_j exp(q̃_i·k̂_j) v_j
over the window. A step drops the evicted key's term from every landmark row and adds the new
key's (O(m d_h)), then answers the new query with one fresh softmax against K̃. With continual
landmarks, every s steps (per row, on its own counter) the segment just completed becomes a new
landmark pair, the oldest pair is dropped, its Δ row is summed afresh over the ring, and A and A⁺
are recomputed (O(n d_h + m² d_h + m³)).

What a step equals (the oracle, docs/continual-attention.md#what-continual-nyström-equals), once a row has seen t ≥ n tokens: Nyström attention on the
current window W_t with the same pinv routine and landmarks = segment means of the window at the
last landmark update, L_t = W_{t - (t mod s)}; at t ≡ 0 (mod s) that is the regular Nyströmformer
on W_t. With fixed landmarks it is Nyström with those landmarks at every t ≥ n.

Numerics (docs/continual-attention.md#guarded-softmax-sums): the Δ sums are stored relative to a per-row exponent offset (exp never
overflows) with a rounding budget; a row whose cancellation error could exceed ``kappa`` fresh
sums is summed afresh from the rings. Continual-landmark rows live n steps; fixed-landmark rows
live forever, and the budget is what bounds their drift.

Files: this one holds the options and the math as plain functions; the regular layers are
``nystrom_attention.py``, the continual ones (state and step) ``continual_nystrom.py``, and the
MAC counts ``flops.py``.

Zero state: ring slots hold "phantom" tokens (k̂ = v = 0) and landmarks start as phantom zeros,
as in ``attention.py``. A row whose counter is 0 starts its Δ sums at z = n (n phantom keys,
exp(0) = 1) and A⁺ at the pseudo-inverse of the uniform A, so an all-zero (or reset) row is a
consistent state and warm-up outputs are finite; they match no regular computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LANDMARK_MODES",
    "PINV_METHODS",
    "NystromOptions",
    "nystrom",
    "parse_attention",
    "pseudo_inverse",
    "segment_means",
]

LANDMARK_MODES = ("continual", "fixed")
PINV_METHODS = ("exact", "iterative")


@dataclass(frozen=True)
class NystromOptions:
    """The options of Nyström attention, validated on construction.

    Args:
        landmarks: ``m``, the number of landmark queries and keys (1 <= m <= n).
        landmark_mode: ``"continual"`` (segment means of the window) or ``"fixed"`` (given or
            learned parameters).
        pinv: ``"iterative"`` (Newton-Schulz, ``pinv_iters`` iterations) or ``"exact"``.
        pinv_iters: Newton-Schulz iterations of the iterative pseudo-inverse.

    :meth:`validate` checks them against a window n. Model configs spell them as an attention
    string, ``"nystrom:m=8,landmarks=fixed"`` (:func:`parse_attention`).

    Example:
        >>> NystromOptions(landmarks=4).validate(window=8)
        >>> NystromOptions(landmarks=4, pinv="svd")
        Traceback (most recent call last):
        ...
        ValueError: pinv must be one of ('exact', 'iterative'), got 'svd'.
    """

    landmarks: int
    landmark_mode: str = "continual"
    pinv: str = "iterative"
    pinv_iters: int = 6

    def __post_init__(self) -> None:
        m = self.landmarks
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"landmarks must be a positive integer m (1 <= m <= n), got {m!r}.")
        if self.landmark_mode not in LANDMARK_MODES:
            raise ValueError(
                f"landmark_mode must be one of {LANDMARK_MODES}, got {self.landmark_mode!r}."
            )
        if self.pinv not in PINV_METHODS:
            raise ValueError(f"pinv must be one of {PINV_METHODS}, got {self.pinv!r}.")
        if self.pinv_iters < 1:
            raise ValueError(
                f"pinv_iters must be >= 1 Newton-Schulz iterations, got {self.pinv_iters}."
            )

    def validate(self, window: int | None, streaming: bool = True) -> None:
        """Raise ``ValueError``, naming the valid choices, if these options cannot run on n."""
        m, n = self.landmarks, window
        if n is not None and m > n:
            raise ValueError(
                f"landmarks={m} exceeds the window n={n}; use 1 <= m <= n (m = n with the exact "
                f"pinv equals softmax attention)."
            )
        if streaming and self.landmark_mode == "continual" and n is not None and n % m != 0:
            divisors = [k for k in range(1, n + 1) if n % k == 0]
            raise ValueError(
                f"Continual landmarks need the window to split into equal segments, but n={n} is "
                f"not divisible by landmarks m={m}. Choose m in {divisors}, or use "
                f"landmark_mode='fixed'."
            )

    def describe(self) -> str:
        """The options as a state-kind suffix: ``m=4,landmarks=fixed,pinv=iterative6``."""
        return (
            f"m={self.landmarks},landmarks={self.landmark_mode},pinv={self.pinv}{self.pinv_iters}"
        )


# -- the math, as plain functions -------------------------------------------------------------
def pseudo_inverse(A: Tensor, method: str = "iterative", iters: int = 6) -> Tensor:
    """Pseudo-inverse of every (m, m) matrix in ``A`` (..., m, m).

    ``"exact"`` is ``torch.linalg.pinv``. ``"iterative"`` is Nyströmformer's Newton-Schulz
    iteration Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))) from Z₀ = Aᵀ / (‖A‖₁ ‖A‖∞); the two norms
    (max column and row sums) are taken per matrix, so one stream never changes another's result
    (the reference implementation takes them over the whole batch).

    Use ``"exact"`` for oracles and the m = n identity. With segment-mean landmarks on real data A
    is often nearly singular, and the exact pinv (torch's default cutoff) amplifies that: on the
    synthetic OAD data it made Nyström 4-14x *further* from softmax attention than the 6-step
    iteration, which only partly inverts tiny singular values (benchmarks/bench_nystrom.py).
    """
    if method == "exact":
        return torch.linalg.pinv(A)
    absA = A.abs()
    col = absA.sum(dim=-2).amax(dim=-1)  # (...,) max column sum per matrix
    row = absA.sum(dim=-1).amax(dim=-1)  # (...,) max row sum per matrix
    Z = A.transpose(-1, -2) / (col * row)[..., None, None]
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    for _ in range(iters):
        AZ = A @ Z
        Z = 0.25 * Z @ (13 * eye - AZ @ (15 * eye - AZ @ (7 * eye - AZ)))
    return Z


def segment_means(x: Tensor, m: int) -> Tensor:
    """Means of m consecutive segments along dim -2: (..., n, d_h) -> (..., m, d_h).

    When n % m != 0 the first n % m segments get one extra token (the reference's regular
    convention); continual landmarks refuse that case.
    """
    n = x.shape[-2]
    if n % m == 0:
        return x.unflatten(-2, (m, n // m)).mean(dim=-2)  # (..., m, d_h)
    sizes = [n // m + 1] * (n % m) + [n // m] * (m - n % m)
    return torch.stack([seg.mean(dim=-2) for seg in x.split(sizes, dim=-2)], dim=-2)


def nystrom(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_l: Tensor,
    k_l: Tensor,
    pinv: str = "iterative",
    iters: int = 6,
) -> Tensor:
    """Nyström attention O = F A⁺ G: (..., n_q, d_h).

    Takes scaled q̂ (..., n_q, d_h), k̂ and v (..., n, d_h), and landmarks q̃, k̃ (..., m, d_h)
    (broadcast over leading dims).
    """
    F_ = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)  # (..., n_q, m)
    A = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)  # (..., m, m)
    G = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1) @ v  # (..., m, d_h)
    return (F_ @ pseudo_inverse(A, pinv, iters)) @ G  # same association as the continual step


def parse_attention(spec: str, window: int | None = None) -> tuple[str, dict[str, Any]]:
    """Split a model-config attention string into (kind, options) for ``ContinualEncoder``.

    ``"softmax"`` -> ("softmax", {}); ``"nystrom:m=8"`` -> ("nystrom", {"landmarks": 8}); more
    options after commas: ``landmarks=continual|fixed``, ``pinv=iterative|exact``, ``iters=K``,
    e.g. ``"nystrom:m=4,pinv=exact"``. Validates the options (against ``window`` if given).
    """
    kind, _, rest = spec.partition(":")
    if kind == "softmax" and not rest:
        return "softmax", {}
    if kind != "nystrom":
        raise ValueError(f"Unknown attention {spec!r}; use 'softmax' or 'nystrom:m=<landmarks>'.")
    names = {"m": "landmarks", "landmarks": "landmark_mode", "pinv": "pinv", "iters": "pinv_iters"}
    options: dict[str, Any] = {}  # NystromOptions' (and the Nyström layers') keyword arguments
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in names or not value:
            raise ValueError(
                f"Bad Nyström option {item!r} in {spec!r}; valid: m=<int>, landmarks=continual|"
                f"fixed, pinv=iterative|exact, iters=<int>."
            )
        options[names[key]] = int(value) if key in ("m", "iters") else value
    if "landmarks" not in options:
        raise ValueError(
            f"Nyström attention needs the number of landmarks, e.g. 'nystrom:m=8' (got {spec!r})."
        )
    NystromOptions(**options).validate(window)
    return "nystrom", options
