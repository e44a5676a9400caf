"""What a continual model is to the code that streams it: :class:`ContinualModel`.

Beam's ``ModelHandler`` is generic in its model type; costream's continual stage types its model
with this ``Protocol`` instead of ``Any``. Every continual zoo model
(:class:`~costream.models.online.ContinualOnlineTransformer`) satisfies it; so may any module
with the same surface.

Example:
    >>> from costream.models.zoo import get_model
    >>> m = get_model("co_oadtr_b1", d_in=8, d_model=16, window=4, heads=2, ffn=16, classes=3)
    >>> isinstance(m, ContinualModel)
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .state import StreamState

__all__ = ["ContinualModel", "ModelInput", "StepOutput"]


class StepOutput(NamedTuple):
    """One continual step: ``scores`` (B, C) logits, ``warm`` (B,) True once a row is exact."""

    scores: Tensor
    warm: Tensor


@runtime_checkable
class ModelInput(Protocol):
    """A model config as the streaming code reads it: ``d_in``, the features per frame."""

    @property
    def d_in(self) -> int: ...


@runtime_checkable
class ContinualModel(Protocol):
    """A model that scores one frame per stream per step, its state explicit.

    * ``window``: n, the frames until a stream's output is exact;
    * ``config.d_in``: D_in, the features per frame;
    * ``init_state(batch_size)``: the all-zero :class:`~costream.models.state.StreamState` of
      ``batch_size`` streams (dtype and device default to the weights');
    * ``step(x, state, index=None)``: ``x`` (B, D_in), ``index`` (B,) int64 frame indices (None:
      each row's token count) -> (:class:`StepOutput` with ``scores`` (B, C) and ``warm`` (B,),
      the updated state);
    * ``parameters()``: as ``nn.Module`` (the streaming code reads the weights' dtype).

    ``isinstance(m, ContinualModel)`` checks that these names exist, not their signatures.
    """

    @property
    def config(self) -> ModelInput: ...

    @property
    def window(self) -> int: ...

    def init_state(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> StreamState: ...

    def step(
        self, x: Tensor, state: StreamState, index: Tensor | None = None
    ) -> tuple[StepOutput, StreamState]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
