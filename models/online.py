"""The zoo's network in its two forms: the regular :class:`OnlineTransformer` and its continual twin.

Every zoo model is one network (docs/continual-attention.md#the-oad-model-and-its-protocol)::

    x_t (D_in) -> token embedding (Linear; audio: conv front-end) -> + recycling PE(arrival t)
               -> Transformer encoder (post-norm GELU blocks, bias-free MHA) -> LayerNorm
               -> Linear head -> class logits of frame t (read at the newest token)

in two forms with identical weights and identical ``state_dict`` keys:

* :class:`OnlineTransformer` (regular, ``oadtr_b1``, ``audio_b2`` …): ``model(window, start)``
  scores the newest frame of each (B, n, D_in) window. The training path and the oracle.
* :class:`ContinualOnlineTransformer` (``co_oadtr_b1`` …): ``model.step(x, state)`` takes one
  frame feature per stream and returns :class:`StepOutput` ``(scores (B, C), warm (B,))``. Built
  from the regular twin by :func:`continual_from_regular` (or ``regular.to_continual()``). It is
  a :class:`~costream.models.protocol.ContinualModel`.

Positional phase: stream row b's token gets ``PE[state.t[b] % M]`` where ``state.t[b]`` counts its
tokens since start/reset, so after a step with ``warm[b]`` the scores equal
``regular(window, start=t_b - n)`` on that stream's last n frames (``t_b`` read after the step).

Scores are logits; the evaluation protocols apply their own softmax (models/metrics.py). The
configs are ``configs.py``; names and builders are ``zoo.py``, files ``cards.py``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .configs import ModelConfig
from .encoder import ContinualEncoder
from .nystrom import parse_attention
from .nystrom_attention import NystromMultiheadAttention
from .positional import RecyclingPositionalEncoding
from .protocol import StepOutput
from .state import StreamState
from .weights import input_major_

__all__ = [
    "ContinualOnlineTransformer",
    "OnlineTransformer",
    "StepOutput",
    "check_config",
    "continual_from_regular",
    "continual_name",
    "regular_name",
]


def check_config(cfg: ModelConfig) -> None:
    """Raise ``ValueError``, in a sentence, for a config no model can be built from."""
    if cfg.d_model % cfg.heads:
        raise ValueError(f"d_model={cfg.d_model} must be divisible by heads={cfg.heads}.")
    if cfg.blocks < 1 or cfg.window < 1 or cfg.classes < 1:
        raise ValueError(f"blocks, window and classes must be positive, got {cfg}.")
    if cfg.pe_size < cfg.window:
        raise ValueError(
            f"pe_size={cfg.pe_size} < window={cfg.window}: two tokens of one window would share a "
            f"positional code; use pe_size >= 2*window - 1 (CoOadTR: 127 for n = 64)."
        )
    parse_attention(cfg.attention, cfg.window)  # "softmax" or "nystrom:m=8,...": refuse bad ones


# -- the regular model -----------------------------------------------------------------------------
class OnlineTransformer(nn.Module):
    """Regular model: scores the newest frame of each window. Training path and oracle.

    Args:
        config: an :class:`OadTRConfig`, :class:`AudioConfig` or :class:`GtzanConfig`.
        name: registry name (kept in saved cards).
    """

    def __init__(self, config: ModelConfig, name: str = "") -> None:
        super().__init__()
        check_config(config)
        self.config, self.name = config, name
        d = config.d_model
        self.embed = config.make_embedding()
        self.pe = RecyclingPositionalEncoding(config.pe_size, d, learned=config.pe_learned)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, config.ffn, config.dropout, activation="gelu", batch_first=True
        )
        # CoOadTR's MHA has no biases (the rest of the block keeps them).
        layer.self_attn = nn.MultiheadAttention(
            d, config.heads, dropout=config.dropout, bias=False, batch_first=True
        )
        kind, options = parse_attention(config.attention, config.window)
        if kind == "nystrom":  # train with the attention the continual twin runs (same keys)
            layer.self_attn = NystromMultiheadAttention(
                d, config.heads, config.dropout, bias=False, window=config.window, **options
            )
        self.encoder = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.classes)

    @property
    def window(self) -> int:
        """n: frames per window."""
        return self.config.window

    def forward(self, window: Tensor, start: Tensor | int = 0) -> Tensor:
        """Logits of the newest frame: ``window`` (B, n, D_in) -> (B, C).

        ``start`` (int or (B,)) is the arrival index of each window's first frame (its positional
        phase). Training draws it at random; to compare with a stream, use the continual row's
        counter minus n after the step.
        """
        B, n = window.shape[:2]
        if n != self.window:
            raise ValueError(f"Expected windows of n={self.window} frames, got {n}.")
        z = self.dropout(self.pe(self.embed(window.reshape(B, n, -1)), start))  # (B, n, d)
        y = self.encoder(z)[:, -1]  # (B, d): the newest token
        return self.head(self.norm(y))  # (B, C)

    def to_continual(self) -> ContinualOnlineTransformer:
        """Continual twin with identical weights (eval mode)."""
        return continual_from_regular(self)


# -- the continual model ---------------------------------------------------------------------------
class ContinualOnlineTransformer(nn.Module):
    """Continual model: one frame per stream per step, same weights as its regular twin.

    ``state_dict`` keys equal the regular model's, so a file saved from either loads into both.
    """

    def __init__(
        self, config: ModelConfig, name: str = "", regular: OnlineTransformer | None = None
    ) -> None:
        super().__init__()
        check_config(config)
        regular = regular if regular is not None else OnlineTransformer(config)
        self.config, self.name = config, name
        # Token-wise parts are copied as they are; only the encoder changes form (docs/continual-attention.md#token-wise-parts).
        self.embed = copy.deepcopy(regular.embed)
        self.pe = copy.deepcopy(regular.pe)
        self.norm = copy.deepcopy(regular.norm)
        self.head = copy.deepcopy(regular.head)
        kind, options = parse_attention(config.attention, config.window)
        self.encoder = ContinualEncoder.from_torch(
            regular.encoder, window=config.window, attention=kind, **options
        )
        input_major_(self).eval()  # one token per step: weights read input-major (faster)

    @property
    def window(self) -> int:
        """n: frames until a stream's output is exact."""
        return self.config.window

    def init_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> StreamState:
        """All-zero state for ``batch_size`` streams (dtype/device default to the weights')."""
        return self.encoder.init_state(batch_size, dtype=dtype, device=device)

    @torch.no_grad()
    def step(
        self, x: Tensor, state: StreamState, index: Tensor | None = None
    ) -> tuple[StepOutput, StreamState]:
        """One frame per stream: ``x`` (B, D_in) -> :class:`StepOutput` (scores (B, C), warm (B,)).

        ``index`` (B,) int64: each frame's index in its stream, which sets its positional phase
        (``index % pe_size``). Streams pass their frame indices, so a row's output depends only
        on its frames and their indices, never on when the row was started or reset: once a row
        is warm again after a reset it equals the uninterrupted row, and the regular oracle is
        ``forward(window, start=index - n + 1)``. Without ``index`` the phase is the row's token
        count since its start (``state.t``), i.e. a stream whose first frame has index 0.

        ``state`` is updated in place and returned. Row b's scores are exact (equal to the
        regular model on its last n frames) where ``warm[b]``; earlier rows are warm-up output.
        """
        B = state.batch_size
        x = x.reshape(B, -1) if x.dim() > 2 else x
        if x.shape[0] != B or x.shape[1] != self.config.d_in:
            raise ValueError(
                f"step expects one frame per stream, (B, D_in) = ({B}, {self.config.d_in}); got {tuple(x.shape)}."
            )
        if index is None:
            index = state.t  # read before the step increments it
        elif index.shape != (B,):
            raise ValueError(f"index must have shape ({B},), got {tuple(index.shape)}.")
        z = self.pe.step(self.embed(x), index)  # (B, d): phase = frame index mod pe_size
        y, state = self.encoder.step(z, state)  # (B, d)
        return StepOutput(self.head(self.norm(y)), state.warm.clone()), state

    def forward(self, window: Tensor, start: Tensor | int = 0) -> Tensor:
        """Regular computation on (B, n, D_in) windows with these weights (the oracle): (B, C)."""
        B, n = window.shape[:2]
        z = self.pe(self.embed(window.reshape(B, n, -1)), start)  # (B, n, d)
        return self.head(self.norm(self.encoder(z)))  # (B, C)


def continual_from_regular(
    model: OnlineTransformer, name: str | None = None
) -> ContinualOnlineTransformer:
    """Build the continual twin of a (trained) regular model, with identical weights, in eval mode."""
    if not isinstance(model, OnlineTransformer):
        raise TypeError(f"Expected an OnlineTransformer, got {type(model).__name__}.")
    p = next(model.parameters())
    co = ContinualOnlineTransformer(model.config, name or continual_name(model.name), regular=model)
    return co.to(dtype=p.dtype, device=p.device).eval()


def continual_name(name: str) -> str:
    """The continual twin's registry name: ``oadtr_b1`` -> ``co_oadtr_b1``."""
    return name if not name or name.startswith("co_") else f"co_{name}"


def regular_name(name: str) -> str:
    """The regular twin's registry name: ``co_oadtr_b1`` -> ``oadtr_b1``."""
    return name[3:] if name.startswith("co_") else name
