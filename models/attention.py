"""Continual scaled dot-product attention (Hedegaard & Iosifidis, ICLR 2023).

Two continual forms of multi-head attention over a sliding window of the last ``n`` tokens, each
next to the regular computation it reproduces (docs/continual-attention.md):

* ``ContinualSingleOutputAttention`` (CoSi): keeps rings of the last n keys and values; a step
  projects only the new token and attends with its query alone. Equals the newest row of regular
  attention on the window, at O(n d) instead of O(n^2 d).
* ``ContinualRetroactiveAttention`` (CoRe): also refreshes the n-1 older rows by subtracting the
  evicted key's term from each row's softmax sums and adding the new key's. Equals all n rows of
  regular attention on the window. The running sums are guarded (docs/continual-attention.md#guarded-softmax-sums): each row keeps its own
  exponent offset (no overflow) and an error budget; a row whose cancellation error could exceed a
  few fresh sums is recomputed from the rings (rare; the new row is always fresh).

Weights are laid out exactly like ``torch.nn.MultiheadAttention`` (``in_proj_weight``,
``in_proj_bias``, ``out_proj``), so trained weights load unchanged.

Stream rows are independent: row b writes ring slot ``t[b] % n`` where ``t[b]`` counts the tokens
it has seen, so streams at different positions share one batched step. The initial state is all
zeros ("phantom" tokens with k = v = 0); outputs before a row has seen n tokens are warm-up and
match no regular computation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import linear, rowdot
from .state import StreamState

__all__ = [
    "ContinualRetroactiveAttention",
    "ContinualSingleOutputAttention",
    "MultiheadWeights",
    "slide_softmax_sums",
    "temporal_order",
    "write_slots",
]


def temporal_order(t: Tensor, n: int) -> Tensor:
    """Ring slots oldest -> newest for rows that have seen ``t`` tokens: (B,) -> (B, n) indices."""
    return (t[:, None] + torch.arange(n, device=t.device)) % n


def write_slots(ring: Tensor, slot: Tensor, value: Tensor) -> None:
    """``ring[b, :, slot[b]] = value[b]`` for every row b; ring (B, h, n, ...), value (B, h, ...).

    One stream on the CPU takes a plain slice copy (no index tensors: a continual step at B=1 is
    short enough that the index bookkeeping shows up in its latency).
    """
    if ring.shape[0] == 1 and ring.device.type == "cpu":
        ring[0, :, int(slot[0])] = value[0]
    else:
        ring[torch.arange(ring.shape[0], device=ring.device), :, slot] = value


def slide_softmax_sums(
    Q: Tensor,
    k_old: Tensor,
    v_old: Tensor,
    k: Tensor,
    v: Tensor,
    D: Tensor,
    AV: Tensor,
    C: Tensor,
    Err: Tensor,
    eps: float,
) -> None:
    """Slide guarded softmax sums by one token, in place.

    Each query row r (``Q`` (..., r, d_h), scaled) keeps ``D = sum exp(s - C)`` and
    ``AV = sum exp(s - C) v`` over the window, relative to its own exponent offset ``C``, plus a
    rounding bound ``Err`` on ``D``. Every row drops the evicted key's term (``k_old``, ``v_old``,
    (..., d_h)) and gains the new key's (``k``, ``v``); the offset is raised first when the new
    score exceeds it, so exp never overflows. Shared by retroactive and Nyström attention.
    """
    s_old = rowdot(Q, k_old)  # (..., r)
    s_new = rowdot(Q, k)  # (..., r)
    c = torch.maximum(C, s_new)
    rescale = torch.exp(C - c)
    e_old, e_new = torch.exp(s_old - c), torch.exp(s_new - c)
    D.mul_(rescale)
    Err.mul_(rescale).add_(eps * (D + e_old + e_new))
    D.add_(e_new - e_old)
    AV.mul_(rescale.unsqueeze(-1))
    AV.add_(e_new.unsqueeze(-1) * v.unsqueeze(-2) - e_old.unsqueeze(-1) * v_old.unsqueeze(-2))
    C.copy_(c)


class MultiheadWeights(nn.Module):
    """Multi-head attention weights with ``torch.nn.MultiheadAttention``'s parameter names.

    Also the regular (window) attention used by the encoder's middle and last layers.

    Args:
        d_model: model dimension ``d``.
        num_heads: ``h``; must divide ``d``.
        bias: in- and out-projection biases (``bias=False`` removes both, as in torch).
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or d_model % num_heads != 0:
            raise ValueError(
                f"d_model={d_model} must be divisible by num_heads={num_heads} "
                f"(each head gets d_model / num_heads dimensions)."
            )
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model)) if bias else None
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, **kwargs: Any) -> MultiheadWeights:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (same d, heads, bias)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"Expected torch.nn.MultiheadAttention, got {type(mha).__name__}.")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "Only MultiheadAttention with kdim = vdim = embed_dim, no add_bias_kv and no "
                "add_zero_attn can run continually."
            )
        p = next(mha.parameters())
        module = cls(mha.embed_dim, mha.num_heads, bias=mha.in_proj_bias is not None, **kwargs)
        module = module.to(dtype=p.dtype, device=p.device)
        module.load_state_dict(mha.state_dict())
        return module.eval()

    def project(self, x: Tensor, step: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """In-projection split into heads: (..., d) -> q, k, v each (..., h, d_h).

        ``step``: a continual step's product (:func:`costream.models.linear.linear`, packed
        weights where they pay); the regular window path keeps ``F.linear``.
        """
        mm = linear if step else F.linear
        qkv = mm(x, self.in_proj_weight, self.in_proj_bias)  # (..., 3d)
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = qkv.chunk(3, dim=-1)
        return q.view(shape), k.view(shape), v.view(shape)

    def merge(self, o: Tensor, step: bool = False) -> Tensor:
        """Concatenate heads and out-project: (..., h, d_h) -> (..., d); ``step`` as in project."""
        o = o.reshape(*o.shape[:-2], self.d_model)
        if step:
            return linear(o, self.out_proj.weight, self.out_proj.bias)
        return self.out_proj(o)

    def attend_window(self, x: Tensor, last_only: bool = False) -> Tensor:
        """Regular attention over a window: (B, n, d) -> (B, n, d), or (B, d) with ``last_only``.

        ``last_only`` computes the newest token's row alone (one query against all n keys), which
        is what a last layer needs once its inputs all change every step.
        """
        B, n, _ = x.shape
        shape = (B, n, self.num_heads, self.head_dim)
        if last_only:  # project keys and values of all n tokens, the query of the newest only
            d, W, b = self.d_model, self.in_proj_weight, self.in_proj_bias
            q = F.linear(x[:, -1:], W[:d], None if b is None else b[:d]).view(B, 1, *shape[2:])
            k, v = F.linear(x, W[d:], None if b is None else b[d:]).chunk(2, dim=-1)
            k, v = k.reshape(shape), v.reshape(shape)  # (B, n, h, d_h)
        else:
            q, k, v = self.project(x)  # each (B, n, h, d_h)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        o = self.merge(o.transpose(1, 2))  # (B, n_q, d)
        return o[:, 0] if last_only else o

    def attend_last(self, x: Tensor, x_q: Tensor) -> Tensor:
        """One query row ``x_q`` (B, d) against keys and values of ``x`` (B, n, d) -> (B, d).

        Equals ``attend_window(x, last_only=True)`` when ``x_q`` is one of the rows of ``x``,
        without projecting the n keys and values (2 n d^2 MACs): by associativity each head's
        score is ``q.(W_k x_i) = (W_k^T q).x_i`` and its output ``sum_i a_i W_v x_i =
        W_v (sum_i a_i x_i)``, so the query is pulled back to input space (d^2) and the weighted
        sum of inputs pushed through W_v once (d^2), leaving 2 n h d for the n rows. The key bias
        adds the same score to every row of a head (softmax ignores it); the value bias passes
        through because each row of weights sums to 1. Rows of ``x`` may be in any order.
        """
        B, n, d = x.shape
        h, d_h = self.num_heads, self.head_dim
        W, b = self.in_proj_weight, self.in_proj_bias
        q = linear(x_q, W[:d], None if b is None else b[:d]) * d_h**-0.5  # (B, d)
        # Each head's block of W_k and W_v is read whole: an output-major in-projection (the
        # encoder stores its last layer's so) makes it one contiguous (d_h, d) block per head,
        # 1.4-1.7x faster than the input-major layout's strided columns (B=1, d=1024).
        W_k = W[d : 2 * d].view(h, d_h, d)  # (h, d_h, d)
        W_v = W[2 * d :].view(h, d_h, d)  # (h, d_h, d)
        qk = torch.bmm(q.view(B, h, d_h).transpose(0, 1), W_k)  # (h, B, d): W_k^T q per head
        s = torch.bmm(qk.transpose(0, 1), x.transpose(1, 2))  # (B, h, n) scores
        z = torch.bmm(torch.softmax(s, dim=-1), x)  # (B, h, d): attention-weighted inputs
        o = torch.bmm(z.transpose(0, 1), W_v.transpose(1, 2)).transpose(0, 1)  # (B, h, d_h)
        if b is not None:
            o = o + b[2 * d :].view(h, d_h)
        return self.merge(o, step=True)  # (B, d)


class _ContinualAttention(MultiheadWeights):
    """Shared plumbing: window size, public ``init_state`` / ``step`` over the engine interface.

    Subclasses implement ``init_tensors(B, dtype, device)`` (all zeros = the initial state) and
    ``step_tensors(u, tensors, t)``, which updates ``tensors`` in place given each row's counter
    ``t`` *before* the step. ``ContinualEncoder`` calls the same two methods.
    """

    def __init__(self, d_model: int, num_heads: int, window: int, bias: bool = True) -> None:
        super().__init__(d_model, num_heads, bias)
        if window < 1:
            raise ValueError(f"window must be a positive number of tokens, got {window}.")
        self.window = window

    def _zeros(self, B: int, *tail: int, dtype: torch.dtype, device: torch.device | None) -> Tensor:
        return torch.zeros(B, self.num_heads, *tail, dtype=dtype, device=device)

    def init_tensors(
        self, B: int, dtype: torch.dtype, device: torch.device | None
    ) -> dict[str, Tensor]:
        """Initial (all-zero) state tensors for ``B`` streams, each with first dimension B."""
        raise NotImplementedError

    def step_tensors(self, u: Tensor, tensors: dict[str, Tensor], t: Tensor) -> Tensor:
        """One step for attention input ``u`` (B, d); mutates ``tensors``; ``t`` is pre-step."""
        raise NotImplementedError

    def init_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> StreamState:
        """All-zero state for ``batch_size`` streams (dtype/device default to the weights')."""
        p = self.in_proj_weight
        tensors = self.init_tensors(batch_size, dtype or p.dtype, device or p.device)
        t = torch.zeros(batch_size, dtype=torch.int64, device=device or p.device)
        kind = f"{type(self).__name__}(d={self.d_model},h={self.num_heads},n={self.window})"
        return StreamState(tensors, t, self.window, kind)

    @torch.no_grad()
    def step(self, x: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """Feed one new token per stream, ``x`` (B, d); updates ``state`` in place and returns it.

        Rows with ``state.warm`` False (after the step) are in warm-up: their output is not exact.
        """
        if x.dim() != 2 or x.shape != (state.batch_size, self.d_model):
            raise ValueError(
                f"step expects x of shape (B, d) = ({state.batch_size}, {self.d_model}), "
                f"got {tuple(x.shape)}."
            )
        y = self.step_tensors(x, state.tensors, state.t)
        state.t += 1
        return y, state


class ContinualSingleOutputAttention(_ContinualAttention):
    """Continual single-output attention (CoSi): the newest token's row, O(n d) per step.

    Example:
        >>> att = ContinualSingleOutputAttention(d_model=8, num_heads=2, window=4).eval()
        >>> state = att.init_state(batch_size=3)
        >>> y, state = att.step(torch.randn(3, 8), state)  # y: (3, 8), warm after 4 steps
    """

    def init_tensors(
        self, B: int, dtype: torch.dtype, device: torch.device | None
    ) -> dict[str, Tensor]:
        n, dh = self.window, self.head_dim
        return {
            "k": self._zeros(B, n, dh, dtype=dtype, device=device),
            "v": self._zeros(B, n, dh, dtype=dtype, device=device),
        }

    def step_tensors(self, u: Tensor, tensors: dict[str, Tensor], t: Tensor) -> Tensor:
        K, V = tensors["k"], tensors["v"]  # (B, h, n, d_h) rings
        q, k, v = self.project(u, step=True)  # each (B, h, d_h)
        slot = t % self.window  # overwrite the oldest token; ring order is irrelevant to softmax
        write_slots(K, slot, k)
        write_slots(V, slot, v)
        o = F.scaled_dot_product_attention(q.unsqueeze(2), K, V)  # (B, h, 1, d_h)
        return self.merge(o.squeeze(2), step=True)  # (B, d)

    def forward(self, window: Tensor) -> Tensor:
        """Regular oracle: the newest row of attention over ``window`` (B, n, d) -> (B, d)."""
        return self.attend_window(window, last_only=True)


class ContinualRetroactiveAttention(_ContinualAttention):
    """Continual retroactive attention (CoRe): all n rows, refreshed in O(n d) per step.

    State per head: rings of scaled queries, keys and values (slot layout), and per row
    (slot) the softmax denominator ``d`` and numerator ``av`` stored relative to the row's own
    exponent offset ``c`` (so exp never overflows), plus an error bound ``err`` on ``d``.

    ``step`` returns (B, n, d) in temporal order, oldest -> newest.

    Args:
        kappa: a row is recomputed from the rings once its accumulated rounding bound exceeds
            ``kappa`` fresh n-term sums (8 keeps the error within a few times regular
            attention's at ~1% extra rows).
    """

    def __init__(
        self, d_model: int, num_heads: int, window: int, bias: bool = True, kappa: float = 8.0
    ) -> None:
        super().__init__(d_model, num_heads, window, bias)
        self.kappa = kappa

    def init_tensors(
        self, B: int, dtype: torch.dtype, device: torch.device | None
    ) -> dict[str, Tensor]:
        n, dh = self.window, self.head_dim
        ring = {
            name: self._zeros(B, n, dh, dtype=dtype, device=device)
            for name in ("q", "k", "v", "av")
        }
        sums = {name: self._zeros(B, n, dtype=dtype, device=device) for name in ("d", "c", "err")}
        return ring | sums

    def step_tensors(self, u: Tensor, tensors: dict[str, Tensor], t: Tensor) -> Tensor:
        o = self.step_heads(u, tensors, t)  # (B, n, d), slot order
        order = temporal_order(t + 1, self.window)  # (B, n): oldest slot first
        o = o.gather(1, order.unsqueeze(-1).expand_as(o))  # (B, n, d), temporal order
        return linear(o, self.out_proj.weight, self.out_proj.bias)  # (B, n, d)

    def step_heads(self, u: Tensor, tensors: dict[str, Tensor], t: Tensor) -> Tensor:
        """As ``step_tensors``, stopping before the out-projection and the temporal reorder.

        Returns the n rows' concatenated head outputs (B, n, d) in *slot* order: row ``i`` is
        the token in ring slot ``i``, the newest being slot ``t % n`` (``t`` pre-step). The
        encoder consumes this directly (token-wise layers and unmasked softmax attention are
        indifferent to row order, and it fuses the out-projection with the residual).
        """
        B, n = u.shape[0], self.window
        Q, K, V, AV = (tensors[k] for k in ("q", "k", "v", "av"))  # (B, h, n, d_h)
        D, C, Err = (tensors[k] for k in ("d", "c", "err"))  # (B, h, n)
        eps = torch.finfo(D.dtype).eps / 2  # unit roundoff of the accumulators
        q, k, v = self.project(u, step=True)  # each (B, h, d_h)
        q = q * self.head_dim**-0.5
        rows, p = torch.arange(B, device=u.device), t % n
        if B == 1 and u.device.type == "cpu":  # views (read before the write below), no gather
            k_old, v_old = K[:, :, int(p[0])], V[:, :, int(p[0])]
        else:
            k_old, v_old = K[rows, :, p], V[rows, :, p]  # evicted token, (B, h, d_h)

        slide_softmax_sums(Q, k_old, v_old, k, v, D, AV, C, Err, eps)

        for ring, new in ((Q, q), (K, k), (V, v)):
            write_slots(ring, p, new)

        # Rows to sum afresh: the new token's row always, and rows whose cancellation bound
        # exceeds the budget (or that cancelled to <= 0). Phantom rows of warm-up are skipped.
        stale = (Err > self.kappa * n * eps * D) | ~torch.isfinite(D)
        stale[rows, :, p] = True
        real = (torch.arange(n, device=u.device) <= t[:, None]) | (t[:, None] >= n)  # (B, n)
        self._recompute(stale & real.unsqueeze(1), Q, K, V, D, AV, C, Err, eps)

        # Rows of never-written (phantom) slots have D = 0 during warm-up; give them 0, not NaN.
        # The quotient is written straight into the (B, n, h, d_h) layout the out-projection
        # reads, so the heads need no separate concatenating copy.
        o = torch.empty(B, n, self.num_heads, self.head_dim, dtype=AV.dtype, device=AV.device)
        torch.div(AV, torch.where(D > 0, D, 1).unsqueeze(-1), out=o.transpose(1, 2))
        return o.view(B, n, self.d_model)  # (B, n, d), slot order

    def _recompute(
        self,
        mask: Tensor,
        Q: Tensor,
        K: Tensor,
        V: Tensor,
        D: Tensor,
        AV: Tensor,
        C: Tensor,
        Err: Tensor,
        eps: float,
    ) -> None:
        """Sum the selected rows (B, h, n mask) from scratch over the current rings."""
        b, h, i = mask.nonzero(as_tuple=True)  # R selected rows
        s = rowdot(K[b, h], Q[b, h, i])  # (R, n) scores over the window
        c = s.amax(dim=-1)  # (R,)
        e = torch.exp(s - c.unsqueeze(-1))  # (R, n)
        d = e.sum(dim=-1)
        D[b, h, i] = d
        AV[b, h, i] = (e.unsqueeze(1) @ V[b, h]).squeeze(1)  # (R, d_h)
        C[b, h, i] = c
        Err[b, h, i] = self.window * eps * d

    def forward(self, window: Tensor) -> Tensor:
        """Regular oracle: all rows of attention over ``window`` (B, n, d) -> (B, n, d)."""
        return self.attend_window(window)
