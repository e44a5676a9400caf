"""Recycling positional encoding (docs/continual-attention.md#positional-phase).

Absolute positions inside the window break continual inference: a token's encoding would change
every time the window slides, and with it its cached key and value. A recycling encoding instead
gives each token the table row of its *arrival index* modulo ``M`` and keeps it for the token's
whole life in the window. With ``M >= 2n - 1`` the cyclic distance between two tokens of one
window equals their true distance, so relative order is never aliased.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RecyclingPositionalEncoding"]


class RecyclingPositionalEncoding(nn.Module):
    """Adds ``PE[arrival_index % M]`` to each token.

    Args:
        num_embeddings: table size ``M`` (CoOadTR: 127 = 2n - 1 for n = 64).
        d_model: feature size ``d``.
        learned: a trainable ``nn.Embedding`` table instead of the fixed periodic one.

    The fixed table is sinusoidal with integer frequencies, so it is exactly periodic in ``M``.

    Example:
        >>> pe = RecyclingPositionalEncoding(7, 4)
        >>> w = torch.zeros(1, 3, 4)
        >>> torch.equal(pe(w, start=5)[:, 2], pe.step(torch.zeros(1, 4), torch.tensor([7]))[:])
        True
    """

    def __init__(self, num_embeddings: int, d_model: int, learned: bool = False) -> None:
        super().__init__()
        if num_embeddings < 1 or d_model < 1:
            raise ValueError(
                f"num_embeddings and d_model must be positive, got {num_embeddings}, {d_model}."
            )
        self.num_embeddings, self.d_model, self.learned = num_embeddings, d_model, learned
        if learned:
            self.table = nn.Parameter(torch.randn(num_embeddings, d_model) * 0.02)
        else:
            p = torch.arange(num_embeddings, dtype=torch.float64)[:, None]  # (M, 1)
            freq = torch.arange(1, (d_model + 1) // 2 + 1, dtype=torch.float64)[
                None
            ]  # (1, ceil(d/2))
            angle = 2 * math.pi * p * freq / num_embeddings  # (M, ceil(d/2))
            table = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[
                :, :d_model
            ]  # (M, d)
            self.register_buffer("table", table.float())

    def step(self, x: Tensor, index: Tensor) -> Tensor:
        """One token per stream: ``x`` (B, d) plus the rows of arrival indices ``index`` (B,)."""
        return x + self.table[index % self.num_embeddings].to(x.dtype)

    def forward(self, window: Tensor, start: Tensor | int = 0) -> Tensor:
        """A window (B, n, d) whose first token arrived at index ``start`` (int or (B,))."""
        B, n, _ = window.shape
        start = torch.as_tensor(start, device=window.device).reshape(-1, 1)  # (B or 1, 1)
        start = start % self.num_embeddings  # first, so indices near 2**63 cannot overflow
        idx = (start + torch.arange(n, device=window.device)) % self.num_embeddings  # (B or 1, n)
        return window + self.table[idx].to(window.dtype)
