"""Continual Nyström attention: single-output and retroactive, one token per step.

The continual form of ``nystrom_attention.py`` (the math is ``nystrom.py``; arXiv 2412.03214;
docs/continual-attention.md#continual-nyström): G = diag(z)⁻¹ E with z_i = Σ_j exp(q̃_i·k̂_j), E_i = Σ_j exp(q̃_i·k̂_j) v_j over the
window. A step drops the evicted key's term from every landmark row and adds the new key's
(O(m d_h)), then answers the new query with one fresh softmax against K̃. With continual
landmarks, every s = n/m steps (per row, on its own counter) the segment just completed becomes
a new landmark pair, the oldest pair is dropped, its Δ row is summed afresh over the ring, and
A and A⁺ are recomputed. The oracle each step equals, the numerics guard and the zero state are
described in ``nystrom.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention import _ContinualAttention, slide_softmax_sums, temporal_order
from .nystrom import NystromOptions
from .nystrom_attention import NystromLayer
from .state import StreamState

__all__ = ["ContinualNystromRetroactiveAttention", "ContinualNystromSingleOutputAttention"]


class _ContinualNystrom(NystromLayer, _ContinualAttention):
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
        options = NystromOptions(landmarks, landmark_mode, pinv, pinv_iters)
        self._init_nystrom(options, window, fixed_landmarks, streaming=True)
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
        q, k, v = self.project(u, step=True)  # each (B, h, d_h)
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

        # Every landmark row drops the evicted key's term and gains the new key's, in the
        # row's exponent frame: raise the offset first when the new score exceeds it.
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

        # Guard (docs/continual-attention.md#guarded-softmax-sums): rows whose cancellation bound exceeds the budget are summed afresh.
        stale = (Err > self.kappa * n * eps * Z) | ~torch.isfinite(Z)  # (B, h, m)
        if stale.any():
            b, hh, i = stale.nonzero(as_tuple=True)
            ql = Ql[b, hh, i] if Ql.dim() == 4 else Ql[hh, i]  # (R, d_h)
            Z[b, hh, i], E[b, hh, i], C[b, hh, i] = _fresh_sums(ql, K[b, hh], V[b, hh])
            Err[b, hh, i] = n * eps * Z[b, hh, i]
        return q, Ql, Kl, P

    def _new_landmarks(self, due: Tensor, T: dict[str, Tensor], eps: float) -> None:
        """Rows ``due`` finished a segment: push its means as the newest landmark pair."""
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
        if "fp" in T:  # retroactive: K̃ changed, so every query's F row changes
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
        return self.merge(o, step=True)  # (B, d)

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
        return self.merge(out.transpose(1, 2), step=True)  # (B, n, d)

    def forward(self, window: Tensor) -> Tensor:
        """Regular oracle: all rows of Nyström attention over ``window`` (B, n, d) -> (B, n, d)."""
        return self.attend_window(window)
