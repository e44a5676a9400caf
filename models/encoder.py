"""Continual Transformer encoder built from a trained ``torch.nn.TransformerEncoder``.

Layer stacking (docs/continual-attention.md#layer-stacking): residuals, LayerNorm and the FFN act on
each token alone, so only attention needs a continual form.

* 1 layer: continual single-output attention; everything else runs on the new token only.
* 2 layers: retroactive attention first (all n rows refreshed, with a residual ring aligned to its
  slots), then a last layer computing only the newest token's row against keys and values of all
  n refreshed rows (they all changed, so nothing can be cached there).
* L >= 3: as for 2, with regular layers over the whole window in between (their inputs change
  every step too; the saving is confined to the first and last layers).

Once a row has seen n tokens since its start or reset, ``step`` equals the regular encoder applied
to that stream's last n tokens, read at the newest token (``ContinualEncoder.forward``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from .attention import (
    ContinualRetroactiveAttention,
    ContinualSingleOutputAttention,
    MultiheadWeights,
    _ContinualAttention,
    temporal_order,
    write_slots,
)
from .continual_nystrom import (
    ContinualNystromRetroactiveAttention,
    ContinualNystromSingleOutputAttention,
)
from .linear import linear
from .nystrom_attention import NystromAttention
from .state import StateFormatError, StreamState
from .weights import input_major_

__all__ = ["ATTENTION_KINDS", "ContinualEncoder", "EncoderLayer"]

# attention kind -> (single-output class, retroactive class, window class); every class takes
# (d_model, num_heads, [window,] bias=..., **options) and has MultiheadWeights' parameter names.
ATTENTION_KINDS: dict[str, tuple[type, type, type]] = {
    "softmax": (ContinualSingleOutputAttention, ContinualRetroactiveAttention, MultiheadWeights),
    # options: landmarks=m, landmark_mode="continual"|"fixed", pinv="iterative"|"exact", ...
    "nystrom": (
        ContinualNystromSingleOutputAttention,
        ContinualNystromRetroactiveAttention,
        NystromAttention,
    ),
}


class EncoderLayer(nn.Module):
    """One ``nn.TransformerEncoderLayer``'s weights (same parameter names) and token-wise parts.

    ``self_attn`` is continual (first layer) or regular window attention (other layers).
    """

    def __init__(
        self,
        self_attn: MultiheadWeights,
        dim_feedforward: int,
        activation: Callable[[Tensor], Tensor],
        norm_first: bool,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        d = self_attn.d_model
        self.self_attn = self_attn
        self.linear1 = nn.Linear(d, dim_feedforward, bias=bias)
        self.linear2 = nn.Linear(dim_feedforward, d, bias=bias)
        self.norm1 = nn.LayerNorm(d, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d, eps=layer_norm_eps, bias=bias)
        self.activation = activation
        self.norm_first = norm_first

    def pre(self, x: Tensor) -> Tensor:
        """Attention input from the layer input (pre-norm applies LN1 first)."""
        return self.norm1(x) if self.norm_first else x

    def post(self, x: Tensor, a: Tensor) -> Tensor:
        """Layer output from its input ``x`` and attention output ``a``, token-wise (..., d)."""
        if self.norm_first:
            y = x + a
            return y + self._ff(self.norm2(y))
        y = self.norm1(x + a)
        return self.norm2(y + self._ff(y))

    def _ff(self, y: Tensor) -> Tensor:
        return self.linear2(self.activation(self.linear1(y)))

    def post_step(self, x: Tensor, a: Tensor) -> Tensor:
        """``post`` in a continual step: its products through :func:`.linear.linear`."""
        return self._post_sum(x + a)

    def _post_sum(self, y: Tensor) -> Tensor:
        """The layer's output from its residual sum ``y = x + a``, the FFN's products fused."""
        if self.norm_first:
            return self._ff_residual(y, self.norm2(y))
        y = self.norm1(y)
        return self.norm2(self._ff_residual(y, y))

    def forward(self, x: Tensor) -> Tensor:
        """Regular layer over a window: (B, n, d) -> (B, n, d)."""
        return self.post(x, self.self_attn.attend_window(self.pre(x)))

    def forward_last(self, x: Tensor) -> Tensor:
        """Regular layer, newest token only: (B, n, d) -> (B, d)."""
        return self.post(x[:, -1], self.self_attn.attend_window(self.pre(x), last_only=True))

    # -- fast forms for the continual step (softmax attention; tested against the above) -------
    def post_heads(self, x: Tensor, o: Tensor) -> Tensor:
        """``post(x, out_proj(o))`` for rows ``x``, ``o`` (B, n, d) -> (B, n, d).

        The out-projection and both residual additions are fused products (one matmul writing
        ``x + o W^T``), saving a pass over the n rows each.
        """
        B, n, d = x.shape
        out_proj = self.self_attn.out_proj
        y = linear(
            o.reshape(B * n, d), out_proj.weight, out_proj.bias, residual=x.reshape(B * n, d)
        )
        return self._post_sum(y).view(B, n, d)

    def _ff_residual(self, y: Tensor, u: Tensor) -> Tensor:
        """``y + FFN(u)`` for (..., d) rows, the activation and the residual fused in.

        Both are fused into the FFN's two products (:func:`.linear.linear`).
        """
        f = linear(u, self.linear1.weight, self.linear1.bias, activation=self.activation)
        return linear(f, self.linear2.weight, self.linear2.bias, residual=y)

    def step_last(self, x: Tensor, newest: Tensor) -> Tensor:
        """``forward_last`` for rows ``x`` (B, n, d) in any order: (B, d).

        The newest token of stream b is row ``newest[b]``. Keys and values of the n rows are
        never projected (``MultiheadWeights.attend_last``).
        """
        u = self.pre(x)  # (B, n, d)
        x_new, u_new = _rows_at(x, newest), _rows_at(u, newest)  # (B, d)
        return self.post_step(x_new, self.self_attn.attend_last(u, u_new))


class ContinualEncoder(nn.Module):
    """A continual Transformer encoder: one new token per stream per step.

    Build it with :meth:`from_torch`. Its ``state_dict`` keys equal the source encoder's.

    Example:
        >>> layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        >>> enc = ContinualEncoder.from_torch(nn.TransformerEncoder(layer, 2), window=8)
        >>> state = enc.init_state(batch_size=3)
        >>> for _ in range(8):
        ...     y, state = enc.step(torch.randn(3, 16), state)  # y: (3, 16)
        >>> state.warm.tolist()
        [True, True, True]
    """

    def __init__(
        self,
        layers: list[EncoderLayer],
        window: int,
        norm: nn.Module | None = None,
        attention: str = "softmax",
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("A continual encoder needs at least one layer.")
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.window = window
        self.attention = attention
        self.d_model = layers[0].self_attn.d_model

    def _layers(self) -> list[EncoderLayer]:
        """``layers`` as the :class:`EncoderLayer` list it holds (``ModuleList`` items are Modules)."""
        return cast("list[EncoderLayer]", list(self.layers))

    def _first_attention(self) -> _ContinualAttention:
        """The first layer's attention: the continual one (the others attend over windows)."""
        return cast(_ContinualAttention, cast(EncoderLayer, self.layers[0]).self_attn)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_torch(
        cls,
        encoder: nn.TransformerEncoder,
        window: int,
        attention: str = "softmax",
        **attention_options: Any,
    ) -> ContinualEncoder:
        """Continual twin of a trained ``nn.TransformerEncoder`` (batch_first), same weights, eval.

        Args:
            encoder: post- or pre-norm layers, any activation, any number of layers, optional
                final norm. Dropout is ignored (continual inference is an eval-mode feature).
            window: ``n``, the number of past tokens each output attends over.
            attention: a key of ``ATTENTION_KINDS`` ("softmax" is exact attention).
            attention_options: passed to the attention classes of that kind.
        """
        if not isinstance(encoder, nn.TransformerEncoder):
            raise TypeError(f"Expected torch.nn.TransformerEncoder, got {type(encoder).__name__}.")
        if attention not in ATTENTION_KINDS:
            raise ValueError(
                f"Unknown attention kind {attention!r}; choose one of {sorted(ATTENTION_KINDS)}."
            )
        if window < 1:
            raise ValueError(f"window must be a positive number of tokens, got {window}.")
        single_cls, retro_cls, window_cls = ATTENTION_KINDS[attention]
        L = len(encoder.layers)
        layers = []
        for i, src in enumerate(encoder.layers):
            mha = src.self_attn
            if not mha.batch_first:
                raise ValueError(
                    "Build the nn.TransformerEncoderLayer with batch_first=True; costream streams (B, n, d) windows."
                )
            d, h, bias = mha.embed_dim, mha.num_heads, mha.in_proj_bias is not None
            if i == 0:
                attn_cls = single_cls if L == 1 else retro_cls
                attn = attn_cls(d, h, window, bias=bias, **attention_options)
            else:
                attn = window_cls(
                    d, h, bias=bias, **_window_options(window_cls, window, attention_options)
                )
            activation = src.activation
            if isinstance(activation, nn.Module):
                activation = copy.deepcopy(activation)
            layer = EncoderLayer(
                attn,
                src.linear1.out_features,
                activation,
                src.norm_first,
                src.norm1.eps,
                bias=src.linear1.bias is not None,
            )
            layers.append(layer)
        norm = copy.deepcopy(encoder.norm) if encoder.norm is not None else None
        module = cls(layers, window, norm, attention)
        p = next(encoder.parameters())
        module = module.to(dtype=p.dtype, device=p.device)
        missing, unexpected = module.load_state_dict(encoder.state_dict(), strict=False)
        own_extra = [k for k in missing if not _is_attention_extra(k)]
        if own_extra or unexpected:
            raise ValueError(
                f"Encoder weights do not map one-to-one: missing {own_extra}, unexpected {unexpected}."
            )
        input_major_(module)
        if L > 1 and attention == "softmax":  # attend_last reads W_k, W_v per head (its docstring)
            last_attn = module._layers()[-1].self_attn
            last_attn.in_proj_weight.data = last_attn.in_proj_weight.data.contiguous()
        return module.eval()

    # -- state ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """Identifies states this encoder can step (shapes, not weights)."""
        kind = self.__dict__.get("_kind")
        if kind is None:  # the shapes are fixed at construction; every step checks the state
            a = self._first_attention()
            kind = self.__dict__["_kind"] = (
                f"ContinualEncoder(L={len(self.layers)},d={self.d_model},h={a.num_heads},"
                f"n={self.window},attention={self.attention})"
            )
        return kind

    def init_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> StreamState:
        """All-zero state for ``batch_size`` streams; dtype/device default to the weights'."""
        p = next(self.parameters())
        dtype, device = dtype or p.dtype, device or p.device
        first = self._first_attention()
        tensors = {f"l0.{k}": v for k, v in first.init_tensors(batch_size, dtype, device).items()}
        if len(self.layers) > 1:  # residual ring of the retroactive layer, aligned to its slots
            tensors["res"] = torch.zeros(
                batch_size, self.window, self.d_model, dtype=dtype, device=device
            )
        t = torch.zeros(batch_size, dtype=torch.int64, device=device)
        return StreamState(tensors, t, self.window, self.kind)

    def check_state(self, state: StreamState) -> None:
        """Raise :class:`StateFormatError` if ``state`` was not made for this encoder's shapes."""
        if state.kind != self.kind:
            raise StateFormatError(f"State of {state.kind} cannot be stepped by {self.kind}.")

    # -- continual step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, x: Tensor, state: StreamState) -> tuple[Tensor, StreamState]:
        """Feed one token per stream, ``x`` (B, d) -> ``y`` (B, d); ``state`` updated in place.

        ``y[b]`` is exact once ``state.warm[b]`` (checked after the step); before that it is
        warm-up output that matches no regular computation.
        """
        B, n = state.batch_size, self.window
        if x.shape != (B, self.d_model):
            raise ValueError(
                f"step expects x of shape (B, d) = ({B}, {self.d_model}), got {tuple(x.shape)}."
            )
        self.check_state(state)
        t = state.t
        first, *rest = self._layers()
        attn = cast(_ContinualAttention, first.self_attn)  # the first layer's is continual
        l0 = _layer_tensors(state, "l0")
        if not rest:
            y = first.post_step(x, attn.step_tensors(first.pre(x), l0, t))  # (B, d)
        elif self.attention == "softmax":
            # Rows stay in ring-slot order throughout: token-wise parts and unmasked softmax
            # attention do not care about row order, and the last layer reads the newest slot.
            res, slot = state.tensors["res"], t % n  # (B, n, d) layer inputs, slot order
            write_slots(res.unsqueeze(1), slot, x.unsqueeze(1))
            retro = cast(ContinualRetroactiveAttention, attn)  # softmax, more than one layer
            o = retro.step_heads(first.pre(x), l0, t)  # (B, n, d) slot order
            h = first.post_heads(res, o)  # (B, n, d): all n refreshed rows
            for layer in rest[:-1]:
                h = layer(h)
            y = rest[-1].step_last(h, slot)  # (B, d)
        else:  # Nyström landmarks are segment means: rows must be in temporal order
            a = attn.step_tensors(first.pre(x), l0, t)  # (B, n, d) temporal order
            res = state.tensors["res"]  # (B, n, d) slot order
            res[torch.arange(B, device=x.device), t % n] = x
            order = temporal_order(t + 1, n)  # (B, n)
            xs = res.gather(1, order.unsqueeze(-1).expand_as(res))  # (B, n, d) oldest -> newest
            h = first.post(xs, a)  # (B, n, d): all n refreshed rows
            for layer in rest[:-1]:
                h = layer(h)
            y = rest[-1].forward_last(h)  # (B, d)
        if self.norm is not None:
            y = self.norm(y)
        state.t += 1
        return y, state

    # -- regular oracle ------------------------------------------------------------------------
    def forward(self, window: Tensor) -> Tensor:
        """Regular encoder over ``window`` (B, n, d), read at the newest token: (B, d).

        Same weights and the same function as ``torch.nn.TransformerEncoder(window)[:, -1]``; this
        is the training path and the oracle the continual step is tested against.
        """
        *body, last = self._layers()
        h = window
        for layer in body:
            h = layer(h)  # (B, n, d)
        y = last.forward_last(h)  # (B, d)
        return self.norm(y) if self.norm is not None else y


def _rows_at(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b]]`` for every stream b: (B, n, d), (B,) -> (B, d); a slice at one stream."""
    if x.shape[0] == 1 and x.device.type == "cpu":
        return x[:, int(index[0])]
    return x[torch.arange(x.shape[0], device=x.device), index]


def _layer_tensors(state: StreamState, prefix: str) -> dict[str, Tensor]:
    """The tensors of one layer, keyed without the prefix (same tensor objects: in-place works)."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.tensors.items() if k.startswith(p)}


def _window_options(window_cls: type, window: int, options: dict[str, Any]) -> dict[str, Any]:
    """Options for window-level attention: exact softmax takes none; other kinds may use them."""
    if window_cls is MultiheadWeights:
        return {}
    return {"window": window, **options}


def _is_attention_extra(key: str) -> bool:
    """Parameters a non-softmax attention kind may add (e.g. learned landmarks) beyond torch's."""
    return ".self_attn." in key and not key.rsplit(".self_attn.", 1)[1].startswith(
        ("in_proj", "out_proj")
    )
