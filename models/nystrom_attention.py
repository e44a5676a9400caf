"""Regular Nyström attention layers: the oracle, the trainable layer, a ``MultiheadAttention``.

The math and the options are ``nystrom.py``; the continual forms are ``continual_nystrom.py``.
:class:`NystromLayer` holds what every Nyström layer shares: the options, the landmarks (segment
means of the window, or fixed (h, m, d_h) parameters in the scaled q̂/k̂ space) and the window
computation ``attend_window``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .attention import MultiheadWeights
from .nystrom import NystromOptions, nystrom, pseudo_inverse, segment_means

__all__ = ["NystromAttention", "NystromLayer", "NystromMultiheadAttention"]


class NystromLayer:
    """Validation, landmark parameters and the window computation shared by all three classes.

    Mixed in before ``MultiheadWeights`` so ``attend_window`` (the encoder's window-level call and
    every class's regular ``forward``) is Nyström attention.
    """

    num_heads: int
    head_dim: int
    # from the class it is mixed into (MultiheadWeights; NystromMultiheadAttention borrows them)
    project: Callable[..., tuple[Tensor, Tensor, Tensor]]  # (x, step=False)
    merge: Callable[..., Tensor]  # (o, step=False)

    def _init_nystrom(
        self,
        options: NystromOptions,
        window: int | None,
        fixed_landmarks: tuple[Tensor, Tensor] | None,
        streaming: bool,
    ) -> None:
        options.validate(window, streaming)
        m, landmark_mode = options.landmarks, options.landmark_mode
        if fixed_landmarks is not None and landmark_mode != "fixed":
            raise ValueError("fixed_landmarks are only used with landmark_mode='fixed'.")
        self.options = options
        self.landmarks, self.landmark_mode = m, landmark_mode
        self.pinv, self.pinv_iters = options.pinv, options.pinv_iters
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
        return self.options.describe()

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


class NystromAttention(NystromLayer, MultiheadWeights):
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
        options = NystromOptions(landmarks, landmark_mode, pinv, pinv_iters)
        self._init_nystrom(options, window, fixed_landmarks, streaming=False)

    def forward(self, window: Tensor) -> Tensor:
        """All rows of Nyström attention over ``window`` (B, n, d) -> (B, n, d)."""
        return self.attend_window(window)


class NystromMultiheadAttention(NystromLayer, nn.MultiheadAttention):
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
        options = NystromOptions(landmarks, landmark_mode, pinv, pinv_iters)
        self._init_nystrom(options, window, fixed_landmarks, streaming=False)
        # A hook keeps nn.TransformerEncoderLayer off its fused softmax fast path, which would
        # bypass this forward in eval mode.
        self.register_forward_pre_hook(lambda module, args: None)

    def forward(
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
