"""Continual Nyström attention (Carreto Picón et al., arXiv 2412.03214).

Nyström attention (Xiong et al. 2021; docs/continual-attention.md §7) replaces the n×n softmax
with m landmark queries and keys Q̃, K̃ (m×d_h per head)::

    F = softmax(Q̂ K̃ᵀ)   (n×m)     A = softmax(Q̃ K̃ᵀ)   (m×m)     G = softmax(Q̃ K̂ᵀ) V   (m×d_h)
    O = F · A⁺ · G

with q̂ = q d_h^-1/4 and k̂ = k d_h^-1/4 (so q̂·k̂ = q·k/√d_h). Landmarks are either *continual*
(segment means of the window: m consecutive segments of s = n/m tokens) or *fixed* (given or
learned parameters). A⁺ is the exact pseudo-inverse or the Newton-Schulz iteration of
Nyströmformer, its initial scaling taken per matrix, i.e. per (stream, head), never across the
batch (§7.1).

Continual form (§7.2-§7.5): G = diag(z)⁻¹ E with z_i = Σ_j exp(q̃_i·k̂_j), E_i = Σ_j exp(q̃_i·k̂_j) v_j
over the window. A step drops the evicted key's term from every landmark row and adds the new
key's (O(m d_h)), then answers the new query with one fresh softmax against K̃. With continual
landmarks, every s steps (per row, on its own counter) the segment just completed becomes a new
landmark pair, the oldest pair is dropped, its Δ row is summed afresh over the ring, and A and A⁺
are recomputed (O(n d_h + m² d_h + m³)).

What a step equals (the oracle, §7.6), once a row has seen t ≥ n tokens: Nyström attention on the
current window W_t with the same pinv routine and landmarks = segment means of the window at the
last landmark update, L_t = W_{t - (t mod s)}; at t ≡ 0 (mod s) that is the regular Nyströmformer
on W_t. With fixed landmarks it is Nyström with those landmarks at every t ≥ n.

Numerics (§7.8, §4.7): the Δ sums are stored relative to a per-row exponent offset (exp never
overflows) with a rounding budget; a row whose cancellation error could exceed ``kappa`` fresh
sums is summed afresh from the rings. Continual-landmark rows live n steps; fixed-landmark rows
live forever, and the budget is what bounds their drift.

Zero state: ring slots hold "phantom" tokens (k̂ = v = 0) and landmarks start as phantom zeros,
as in ``attention.py``. A row whose counter is 0 starts its Δ sums at z = n (n phantom keys,
exp(0) = 1) and A⁺ at the pseudo-inverse of the uniform A, so an all-zero (or reset) row is a
consistent state and warm-up outputs are finite; they match no regular computation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import (
    MultiheadWeights,
    _ContinualAttention,
    slide_softmax_sums,
    temporal_order,
)
from .state import StreamState

__all__ = [
    "LANDMARK_MODES",
    "PINV_METHODS",
    "ContinualNystromRetroactiveAttention",
    "ContinualNystromSingleOutputAttention",
    "NystromAttention",
    "NystromMultiheadAttention",
    "continual_nystrom_macs",
    "nystrom",
    "nystrom_encoder_macs_delta",
    "nystrom_macs",
    "parse_attention",
    "pseudo_inverse",
    "segment_means",
    "validate_options",
]

LANDMARK_MODES = ("continual", "fixed")
PINV_METHODS = ("exact", "iterative")


# -- the math, as plain functions -------------------------------------------------------------
def pseudo_inverse(A: Tensor, method: str = "iterative", iters: int = 6) -> Tensor:
    """Pseudo-inverse of every (m, m) matrix in ``A`` (..., m, m).

    ``"exact"`` is ``torch.linalg.pinv``. ``"iterative"`` is Nyströmformer's Newton-Schulz
    iteration Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))) from Z₀ = Aᵀ / (‖A‖₁ ‖A‖∞); the two norms
    (max column and row sums) are taken per matrix, so one stream never changes another's result
    (the reference takes them over the whole batch, §7.1).

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
    convention, §7.1); continual landmarks refuse that case.
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


# -- MACs (§7.1, §7.7; attention part only, all heads) ----------------------------------------
def nystrom_macs(
    n: int, d: int, h: int, m: int, pinv_iters: int = 6, rows: int | None = None
) -> int:
    """Regular Nyström attention over a window of n tokens, ``rows`` outputs (default n).

    4 n m d + h n m² + m² d + 4 k h m³ for all n rows (§7.7 with k = 6 Newton-Schulz iterations;
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

    Amortised over the s = n/m schedule for continual landmarks; the §7.7 formulas::

        single, fixed:       7 m d + h m²
        retroactive, fixed:  n m d + 7 m d + h m²
        continual landmarks: + (m/n)(2 n d + 2 m d + m² d + 4 k h m³)   [+ (m/n)(n m d + h n m²) retro]

    (This implementation recomputes A from the landmarks, m² d, instead of updating it with a new
    row and column, 2 m d; the formula keeps both terms as §7.7 does, an upper bound by 2 m d.)
    """
    fixed = 7 * m * d + h * m * m + (n * m * d if retroactive else 0)
    if landmark_mode == "fixed":
        return float(fixed)
    update = 2 * n * d + 2 * m * d + m * m * d + 4 * pinv_iters * h * m**3
    if retroactive:
        update += n * m * d + h * n * m * m
    return fixed + m / n * update


def nystrom_encoder_macs_delta(
    *,
    layers: int,
    n: int,
    d: int,
    h: int,
    continual: bool,
    landmarks: int,
    landmark_mode: str = "continual",
    pinv: str = "iterative",
    pinv_iters: int = 6,
) -> float:
    """Per-frame MACs of an encoder's Nyström attention minus its softmax attention (clean, §8.1).

    Add it to a softmax encoder count (``flops.encoder_macs``) to count the Nyström variant:
    regular layers swap 2 n² d for :func:`nystrom_macs`; a continual single-output first layer swaps
    2 n d, a retroactive one 7 n d, for :func:`continual_nystrom_macs`; the last layer after a
    retroactive one runs a one-row Nyström over the window, with the keys and values of all n rows
    projected (2 n d² + 2 d² + 2 d f besides), in place of softmax's projection-free last layer
    (``flops.encoder_layer_macs("last")``). ``pinv`` is counted as the iteration either way
    (nominal for the exact pinv).
    """
    m, k = landmarks, pinv_iters
    full = nystrom_macs(n, d, h, m, k) - 2 * n * n * d
    if not continual:
        return layers * full
    if layers == 1:
        return continual_nystrom_macs(n, d, h, m, False, landmark_mode, k) - 2 * n * d
    first = continual_nystrom_macs(n, d, h, m, True, landmark_mode, k) - 7 * n * d
    from .flops import encoder_layer_macs

    f = 0  # the FFN terms cancel: both last layers run it on one row
    softmax_last = encoder_layer_macs("last", d=d, n=n, f=f, h=h)
    nystrom_last = 2 * n * d * d + 2 * d * d + nystrom_macs(n, d, h, m, k, rows=1)
    return first + (layers - 2) * full + nystrom_last - softmax_last


def validate_options(
    landmarks: int,
    window: int | None,
    landmark_mode: str = "continual",
    pinv: str = "iterative",
    pinv_iters: int = 6,
    streaming: bool = True,
) -> None:
    """Raise ``ValueError`` with a sentence naming the valid choices if the options are bad."""
    m, n = landmarks, window
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"landmarks must be a positive integer m (1 <= m <= n), got {m!r}.")
    if n is not None and m > n:
        raise ValueError(
            f"landmarks={m} exceeds the window n={n}; use 1 <= m <= n (m = n with the exact "
            f"pinv equals softmax attention)."
        )
    if landmark_mode not in LANDMARK_MODES:
        raise ValueError(f"landmark_mode must be one of {LANDMARK_MODES}, got {landmark_mode!r}.")
    if streaming and landmark_mode == "continual" and n is not None and n % m != 0:
        divisors = [k for k in range(1, n + 1) if n % k == 0]
        raise ValueError(
            f"Continual landmarks need the window to split into equal segments, but n={n} is "
            f"not divisible by landmarks m={m}. Choose m in {divisors}, or use "
            f"landmark_mode='fixed' (§7.9)."
        )
    if pinv not in PINV_METHODS:
        raise ValueError(f"pinv must be one of {PINV_METHODS}, got {pinv!r}.")
    if pinv_iters < 1:
        raise ValueError(f"pinv_iters must be >= 1 Newton-Schulz iterations, got {pinv_iters}.")


# -- shared configuration ---------------------------------------------------------------------
class _NystromConfig:
    """Validation, landmark parameters and the window computation shared by all three classes.

    Mixed in before ``MultiheadWeights`` so ``attend_window`` (the encoder's window-level call and
    every class's regular ``forward``) is Nyström attention.
    """

    num_heads: int
    head_dim: int

    def _init_nystrom(
        self,
        landmarks: int,
        window: int | None,
        landmark_mode: str,
        pinv: str,
        pinv_iters: int,
        fixed_landmarks: tuple[Tensor, Tensor] | None,
        streaming: bool,
    ) -> None:
        m = landmarks
        validate_options(landmarks, window, landmark_mode, pinv, pinv_iters, streaming)
        if fixed_landmarks is not None and landmark_mode != "fixed":
            raise ValueError("fixed_landmarks are only used with landmark_mode='fixed'.")
        self.landmarks, self.landmark_mode = m, landmark_mode
        self.pinv, self.pinv_iters = pinv, pinv_iters
        self._fixed_cache: tuple[tuple, Tensor] | None = None
        if landmark_mode == "fixed":
            shape = (self.num_heads, m, self.head_dim)
            if fixed_landmarks is None:  # learned: scaled like q̂, k̂ of unit-variance q, k
                q_l = torch.randn(shape) * self.head_dim**-0.25
                k_l = torch.randn(shape) * self.head_dim**-0.25
            else:
                q_l, k_l = (torch.as_tensor(x, dtype=torch.float32) for x in fixed_landmarks)
                if q_l.shape != shape or k_l.shape != shape:
                    raise ValueError(
                        f"fixed_landmarks must be two tensors of shape (h, m, d_h) = {shape} in the "
                        f"scaled q̂/k̂ space, got {tuple(q_l.shape)} and {tuple(k_l.shape)}."
                    )
            self.landmark_q = nn.Parameter(q_l.clone())
            self.landmark_k = nn.Parameter(k_l.clone())

    def _describe(self) -> str:
        return (
            f"m={self.landmarks},landmarks={self.landmark_mode},pinv={self.pinv}{self.pinv_iters}"
        )

    def _pinv(self, A: Tensor) -> Tensor:
        return pseudo_inverse(A, self.pinv, self.pinv_iters)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Scaled per-head projections of a window: (B, n, d) -> q̂, k̂, v each (B, h, n, d_h)."""
        q, k, v = (z.transpose(1, 2) for z in self.project(x))  # each (B, h, n, d_h)
        scale = self.head_dim**-0.25
        return q * scale, k * scale, v

    def attend_window(self, x: Tensor, last_only: bool = False) -> Tensor:
        """Regular Nyström attention over a window: (B, n, d) -> (B, n, d).

        With ``last_only``, the newest token's row alone, (B, d); landmarks still come from the
        whole window.
        """
        n = x.shape[1]
        if self.landmarks > n:
            raise ValueError(f"landmarks={self.landmarks} exceeds the window length n={n}.")
        q, k, v = self._heads(x)  # each (B, h, n, d_h)
        if self.landmark_mode == "fixed":
            q_l, k_l = self.landmark_q.to(q.dtype), self.landmark_k.to(q.dtype)  # (h, m, d_h)
        else:
            q_l, k_l = segment_means(q, self.landmarks), segment_means(k, self.landmarks)
        o = nystrom(q[:, :, -1:] if last_only else q, k, v, q_l, k_l, self.pinv, self.pinv_iters)
        o = self.merge(o.transpose(1, 2))  # (B, n_q, d)
        return o[:, 0] if last_only else o

    def _fixed_pinv(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Fixed landmarks (h, m, d_h) and their A⁺ (h, m, m), cached until the parameters change."""
        q_l, k_l = self.landmark_q, self.landmark_k
        key = (q_l._version, k_l._version, q_l.data_ptr(), k_l.data_ptr(), dtype, q_l.device)
        if self._fixed_cache is None or self._fixed_cache[0] != key:
            ql, kl = q_l.detach().to(dtype), k_l.detach().to(dtype)
            P = self._pinv(torch.softmax(ql @ kl.transpose(-1, -2), dim=-1))  # (h, m, m)
            self._fixed_cache = (key, P)
        return q_l.detach().to(dtype), k_l.detach().to(dtype), self._fixed_cache[1]


class NystromAttention(_NystromConfig, MultiheadWeights):
    """Regular (window) Nyström multi-head attention: the oracle and the trainable layer.

    Parameters are named like ``torch.nn.MultiheadAttention`` (plus ``landmark_q``, ``landmark_k``
    of shape (h, m, d_h) with fixed landmarks, learned when trained).

    Args:
        d_model, num_heads, bias: as ``torch.nn.MultiheadAttention`` (``d_model % num_heads == 0``).
        window: ``n`` if known (validates m <= n early); windows of any length >= m are accepted.
        landmarks: ``m``. Segment means over uneven segments when n % m != 0 (regular form only).
        landmark_mode: ``"continual"`` (segment means of the window) or ``"fixed"``.
        pinv: ``"iterative"`` (Newton-Schulz, ``pinv_iters`` iterations) or ``"exact"``.
        fixed_landmarks: optional initial (q̃, k̃), each (h, m, d_h), in the scaled q̂/k̂ space.

    Example:
        >>> att = NystromAttention(d_model=16, num_heads=2, landmarks=4)
        >>> att(torch.randn(3, 8, 16)).shape
        torch.Size([3, 8, 16])
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        window: int | None = None,
        bias: bool = True,
        *,
        landmarks: int,
        landmark_mode: str = "continual",
        pinv: str = "iterative",
        pinv_iters: int = 6,
        fixed_landmarks: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__(d_model, num_heads, bias)
        self.window = window
        self._init_nystrom(
            landmarks, window, landmark_mode, pinv, pinv_iters, fixed_landmarks, streaming=False
        )

    def forward(self, window: Tensor) -> Tensor:
        """All rows of Nyström attention over ``window`` (B, n, d) -> (B, n, d)."""
        return self.attend_window(window)


class NystromMultiheadAttention(_NystromConfig, nn.MultiheadAttention):
    """Drop-in ``torch.nn.MultiheadAttention`` that computes Nyström self-attention.

    Put it in a ``nn.TransformerEncoderLayer`` (``layer.self_attn = ...``) to train a regular
    encoder with Nyström attention: parameter names stay torch's, so
    ``ContinualEncoder.from_torch(encoder, attention="nystrom", ...)`` converts it with the same
    options. Self-attention only (query is key is value), batch_first, no masks; the attention
    ``dropout`` is not applied (Nyström has no single attention matrix to drop from).
    """

    project = MultiheadWeights.project
    merge = MultiheadWeights.merge

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        *,
        window: int | None = None,
        landmarks: int,
        landmark_mode: str = "continual",
        pinv: str = "iterative",
        pinv_iters: int = 6,
        fixed_landmarks: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        if not batch_first:
            raise ValueError("NystromMultiheadAttention needs batch_first=True: (B, n, d) windows.")
        if num_heads < 1 or embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, batch_first=True)
        self.d_model = embed_dim
        self._init_nystrom(
            landmarks, window, landmark_mode, pinv, pinv_iters, fixed_landmarks, streaming=False
        )
        # A hook keeps nn.TransformerEncoderLayer off its fused softmax fast path, which would
        # bypass this forward in eval mode.
        self.register_forward_pre_hook(lambda module, args: None)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """Nyström self-attention over ``query`` (B, n, d): returns ((B, n, d), None)."""
        if key is not query or value is not query:
            raise ValueError("NystromMultiheadAttention supports self-attention only (q = k = v).")
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("NystromMultiheadAttention supports no masks (continual inference).")
        return self.attend_window(query), None


def parse_attention(spec: str, window: int | None = None) -> tuple[str, dict[str, object]]:
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
    options: dict[str, object] = {}
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
    validate_options(window=window, **options)  # type: ignore[arg-type]
    return "nystrom", options


class _ContinualNystrom(_NystromConfig, _ContinualAttention):
    """State layout and the per-token Δ update shared by the single-output and retroactive forms.

    Per row (stream) b and head, the tensors are:
        k, v   (n, d_h)    rings of k̂ and v; slot t % n holds the newest token
        z, c, err (m)      Δ denominators (relative to offset c) and their rounding bound
        e      (m, d_h)    Δ numerators E (relative to c)
      continual landmarks only:
        ql, kl (m, d_h)    landmark FIFO, oldest first
        qsum, ksum (d_h)   running sums of q̂, k̂ over the segment being filled
        pinv   (m, m)      A⁺ of the current landmarks
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        window: int,
        bias: bool = True,
        *,
        landmarks: int,
        landmark_mode: str = "continual",
        pinv: str = "iterative",
        pinv_iters: int = 6,
        kappa: float = 8.0,
        fixed_landmarks: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__(d_model, num_heads, window, bias)
        self._init_nystrom(
            landmarks, window, landmark_mode, pinv, pinv_iters, fixed_landmarks, streaming=True
        )
        self.kappa = kappa
        self.segment = window // landmarks  # s: steps between landmark updates

    def init_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> StreamState:
        """All-zero state for ``batch_size`` streams (see the class docstring for its tensors)."""
        state = super().init_state(batch_size, dtype, device)
        state.kind = state.kind[:-1] + "," + self._describe() + ")"
        return state

    def init_tensors(
        self, B: int, dtype: torch.dtype, device: torch.device | None
    ) -> dict[str, Tensor]:
        n, m, dh = self.window, self.landmarks, self.head_dim
        z = self._zeros
        tensors = {
            "k": z(B, n, dh, dtype=dtype, device=device),
            "v": z(B, n, dh, dtype=dtype, device=device),
            "z": z(B, m, dtype=dtype, device=device),
            "c": z(B, m, dtype=dtype, device=device),
            "err": z(B, m, dtype=dtype, device=device),
            "e": z(B, m, dh, dtype=dtype, device=device),
        }
        if self.landmark_mode == "continual":
            tensors |= {
                "ql": z(B, m, dh, dtype=dtype, device=device),
                "kl": z(B, m, dh, dtype=dtype, device=device),
                "qsum": z(B, dh, dtype=dtype, device=device),
                "ksum": z(B, dh, dtype=dtype, device=device),
                "pinv": z(B, m, m, dtype=dtype, device=device),
            }
        return tensors

    # -- the shared part of a step -------------------------------------------------------------
    def _advance(
        self, u: Tensor, T: dict[str, Tensor], t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Project the new token, slide the Δ sums and rings, refresh landmarks where due.

        Returns q̂ (B, h, d_h), the landmarks q̃, k̃ ((B, h, m, d_h) or shared (h, m, d_h)), and A⁺
        ((B, h, m, m) or (h, m, m)), all current after this token.
        """
        B, n, m = u.shape[0], self.window, self.landmarks
        K, V, Z, E, C, Err = (T[key] for key in ("k", "v", "z", "e", "c", "err"))
        eps = torch.finfo(Z.dtype).eps / 2  # unit roundoff of the accumulators
        q, k, v = self.project(u)  # each (B, h, d_h)
        scale = self.head_dim**-0.25
        q, k = q * scale, k * scale
        rows, slot = torch.arange(B, device=u.device), t % n

        fresh = t == 0  # rows starting (or reset): n phantom keys, exp(0) = 1 each
        if self.landmark_mode == "continual":
            Ql, Kl, P = T["ql"], T["kl"], T["pinv"]  # (B, h, m, d_h), (B, h, m, d_h), (B, h, m, m)
            P[fresh] = 1.0 / m  # A⁺ of the phantom landmarks' uniform A (it is its own pinv)
        else:
            Ql, Kl, P = self._fixed_pinv(Z.dtype)  # (h, m, d_h), (h, m, d_h), (h, m, m)
        Z[fresh] = float(n)

        # Every landmark row drops the evicted key's term and gains the new key's (§7.2), in the
        # row's exponent frame: raise the offset first when the new score exceeds it (§4.7).
        k_old, v_old = K[rows, :, slot], V[rows, :, slot]  # evicted token, (B, h, d_h)
        slide_softmax_sums(Ql, k_old, v_old, k, v, Z, E, C, Err, eps)  # (B, h, m) rows
        K[rows, :, slot], V[rows, :, slot] = k, v
        if "q" in T:  # retroactive: ring of q̂ for F rows
            T["q"][rows, :, slot] = q

        if self.landmark_mode == "continual":
            T["qsum"].add_(q)
            T["ksum"].add_(k)
            due = ((t + 1) % self.segment == 0).nonzero().flatten()  # rows completing a segment
            if len(due):
                self._new_landmarks(due, T, eps)

        # Guard (§4.7, §7.8): rows whose cancellation bound exceeds the budget are summed afresh.
        stale = (Err > self.kappa * n * eps * Z) | ~torch.isfinite(Z)  # (B, h, m)
        if stale.any():
            b, hh, i = stale.nonzero(as_tuple=True)
            ql = Ql[b, hh, i] if Ql.dim() == 4 else Ql[hh, i]  # (R, d_h)
            Z[b, hh, i], E[b, hh, i], C[b, hh, i] = _fresh_sums(ql, K[b, hh], V[b, hh])
            Err[b, hh, i] = n * eps * Z[b, hh, i]
        return q, Ql, Kl, P

    def _new_landmarks(self, due: Tensor, T: dict[str, Tensor], eps: float) -> None:
        """Rows ``due`` finished a segment: push its means as the newest landmark pair (§7.5)."""
        n, s = self.window, self.segment
        K, V = T["k"][due], T["v"][due]  # (R, h, n, d_h)
        q_new, k_new = T["qsum"][due] / s, T["ksum"][due] / s  # (R, h, d_h)
        T["qsum"][due] = 0
        T["ksum"][due] = 0
        Ql = torch.cat([T["ql"][due, :, 1:], q_new.unsqueeze(2)], dim=2)  # (R, h, m, d_h) FIFO
        Kl = torch.cat([T["kl"][due, :, 1:], k_new.unsqueeze(2)], dim=2)
        T["ql"][due], T["kl"][due] = Ql, Kl
        # Drop the oldest Δ row; the new landmark's row is summed afresh over the current window.
        z, e, c = _fresh_sums(q_new, K, V)  # (R, h), (R, h, d_h), (R, h)
        for key, new in (("z", z), ("e", e), ("c", c), ("err", n * eps * z)):
            old = T[key][due, :, 1:]
            T[key][due] = torch.cat([old, new.unsqueeze(2)], dim=2)
        A = torch.softmax(Ql @ Kl.transpose(-1, -2), dim=-1)  # (R, h, m, m), fresh and stable
        P = self._pinv(A)
        T["pinv"][due] = P
        if "fp" in T:  # retroactive: K̃ changed, so every query's F row changes (§7.5 step 4)
            Fq = torch.softmax(T["q"][due] @ Kl.transpose(-1, -2), dim=-1)  # (R, h, n, m)
            T["fp"][due] = Fq @ P  # (R, h, n, m)

    @staticmethod
    def _query(q: Tensor, Kl: Tensor, P: Tensor) -> Tensor:
        """The new query's row of F A⁺: softmax(q̂ K̃ᵀ) A⁺, (B, h, m)."""
        f = torch.softmax((Kl @ q.unsqueeze(-1)).squeeze(-1), dim=-1)  # (B, h, m)
        return (f.unsqueeze(-2) @ P).squeeze(-2)  # (B, h, m)


def _fresh_sums(q_l: Tensor, K: Tensor, V: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Δ sums of landmark queries q̃ (..., d_h) over rings K, V (..., n, d_h), offset-stable.

    Returns z (...), E (..., d_h) relative to c = max score, and c (...).
    """
    s = (K @ q_l.unsqueeze(-1)).squeeze(-1)  # (..., n) scores over the window
    c = s.amax(dim=-1)
    e = torch.exp(s - c.unsqueeze(-1))  # (..., n)
    return e.sum(dim=-1), (e.unsqueeze(-2) @ V).squeeze(-2), c


class ContinualNystromSingleOutputAttention(_ContinualNystrom):
    """Continual single-output Nyström attention: the newest row, O(m d_h) per head per step.

    Same arguments as :class:`NystromAttention` plus ``window`` (required, n) and ``kappa`` (the
    rounding budget, in fresh n-term sums, after which a Δ row is recomputed). Continual
    landmarks need n % m == 0.

    Example:
        >>> att = ContinualNystromSingleOutputAttention(16, 2, window=8, landmarks=4).eval()
        >>> state = att.init_state(batch_size=3)
        >>> y, state = att.step(torch.randn(3, 16), state)  # y: (3, 16), warm after 8 steps
    """

    def step_tensors(self, u: Tensor, tensors: dict[str, Tensor], t: Tensor) -> Tensor:
        q, _, Kl, P = self._advance(u, tensors, t)
        G = tensors["e"] / tensors["z"].unsqueeze(-1)  # (B, h, m, d_h) = softmax(Q̃ K̂ᵀ) V
        o = (self._query(q, Kl, P).unsqueeze(-2) @ G).squeeze(-2)  # (B, h, d_h)
        return self.merge(o)  # (B, d)

    def forward(self, window: Tensor) -> Tensor:
        """Regular oracle: the newest row of Nyström attention over ``window`` (B, n, d) -> (B, d)."""
        return self.attend_window(window, last_only=True)


class ContinualNystromRetroactiveAttention(_ContinualNystrom):
    """Continual retroactive Nyström attention: all n rows, n m d_h + O(m d_h) per head per step.

    Extra state: ring ``q`` (n, d_h) of q̂ and ring ``fp`` (n, m) of the rows of F A⁺; ``step``
    returns (B, n, d) in temporal order, oldest -> newest.

    Example:
        >>> att = ContinualNystromRetroactiveAttention(16, 2, window=8, landmarks=2).eval()
        >>> state = att.init_state(batch_size=3)
        >>> y, state = att.step(torch.randn(3, 16), state)  # y: (3, 8, 16)
    """

    def init_tensors(
        self, B: int, dtype: torch.dtype, device: torch.device | None
    ) -> dict[str, Tensor]:
        n, m, dh = self.window, self.landmarks, self.head_dim
        tensors = super().init_tensors(B, dtype, device)
        tensors["q"] = self._zeros(B, n, dh, dtype=dtype, device=device)
        tensors["fp"] = self._zeros(B, n, m, dtype=dtype, device=device)
        return tensors

    def step_tensors(self, u: Tensor, tensors: dict[str, Tensor], t: Tensor) -> Tensor:
        B, n = u.shape[0], self.window
        q, _, Kl, P = self._advance(u, tensors, t)
        FP = tensors["fp"]  # (B, h, n, m), slot order
        FP[torch.arange(B, device=u.device), :, t % n] = self._query(q, Kl, P)
        G = tensors["e"] / tensors["z"].unsqueeze(-1)  # (B, h, m, d_h)
        out = FP @ G  # (B, h, n, d_h), slot order
        order = temporal_order(t + 1, n)  # (B, n): oldest slot first
        out = out.gather(2, order[:, None, :, None].expand_as(out))  # temporal order
        return self.merge(out.transpose(1, 2))  # (B, n, d)

    def forward(self, window: Tensor) -> Tensor:
        """Regular oracle: all rows of Nyström attention over ``window`` (B, n, d) -> (B, n, d)."""
        return self.attend_window(window)
