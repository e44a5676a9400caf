"""Audio classifier pieces: log-mel patch front-end, its configuration, and the papers' GTZAN setting.

The audio model of the zoo (``audio_b2`` / ``co_audio_b2``) classifies a stream of log-mel
frames into GTZAN-style genres. One *token* is a patch of ``patch`` consecutive log-mel frames
(``n_mels`` bins each); a small 1-D convolution stack runs over the frames **inside** the patch
only, so the front-end is token-wise and the continual model stays exactly equal to the regular
one (docs/continual-attention.md#token-wise-parts: anything token-wise is free). The encoder then mixes the
last ``window`` tokens::

    (B, n_mels, patch) -> Conv1d(n_mels→c, 3) -> GELU -> Conv1d(c→c, 3) -> GELU -> mean over patch
                       -> Linear(c→d) -> recycling PE -> continual encoder -> LN -> Linear(d→10)

The mel spectrogram itself is computed outside ``models/`` (a transform), so a model input per
step is either ``(B, n_mels, patch)`` or the same numbers flattened to ``(B, n_mels * patch)``
(mel-bin major: ``x.reshape(B, n_mels, patch)`` recovers the patch). With the defaults (64 mels,
10 ms hop, patch 8) a token is 80 ms of audio and a window of 32 tokens is 2.56 s.

Training data uses the ``.npz`` layout of ``costream.models.data``: ``features`` (T, n_mels*patch)
flattened patches, ``targets`` (T, 10) the clip's genre one-hot on every token, and a
``dataset.json`` with ``"background": null`` (genres have no background class), then
``costream train --model audio_b2 --data DATA --out audio.safetensors``.

The papers' own audio setting is a second family, ``gtzan`` (:class:`GtzanConfig`; docs/audio-setting.md):
one token per 128-d VGGish embedding of a 1 s sub-clip, a new token every 0.25 s, a window of
n = 120 tokens (30 s), ``Linear(128 -> 192)`` + recycling PE, 1 or 2 blocks (16 heads, FFN 192),
10 genres. The VGGish front-end that makes the tokens from PCM is ``costream.models.vggish``.

Example:
    >>> import torch
    >>> fe = MelPatchEmbedding(n_mels=8, patch=4, channels=6, d_model=10)
    >>> fe(torch.randn(3, 32)).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GTZAN_GENRES", "AudioConfig", "GtzanConfig", "MelPatchEmbedding"]

GTZAN_GENRES = [
    "blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock",
]  # fmt: skip


class MelPatchEmbedding(nn.Module):
    """Token-wise conv front-end: ``(..., n_mels * patch)`` log-mel patch -> ``(..., d_model)``."""

    def __init__(self, n_mels: int, patch: int, channels: int, d_model: int) -> None:
        super().__init__()
        if min(n_mels, patch, channels, d_model) < 1:
            raise ValueError("n_mels, patch, channels and d_model must all be positive.")
        self.n_mels, self.patch = n_mels, patch
        self.conv1 = nn.Conv1d(n_mels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.proj = nn.Linear(channels, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Embed every token independently; leading dims are kept."""
        lead = x.shape[:-1]
        if x.shape[-1] != self.n_mels * self.patch:
            raise ValueError(
                f"Expected log-mel patches of {self.n_mels} mels x {self.patch} frames = "
                f"{self.n_mels * self.patch} values per token, got {x.shape[-1]}."
            )
        z = x.reshape(-1, self.n_mels, self.patch)  # (N, n_mels, patch), N = prod(lead)
        z = F.gelu(self.conv1(z))  # (N, c, patch)
        z = F.gelu(self.conv2(z))  # (N, c, patch)
        z = self.proj(z.mean(dim=-1))  # (N, d)
        return z.reshape(*lead, -1)  # (..., d)


@dataclass(frozen=True)
class AudioConfig:
    """Audio classifier configuration (saved in the model card)."""

    n_mels: int = 64
    patch: int = 8
    channels: int = 64
    d_model: int = 128
    window: int = 32
    heads: int = 4
    ffn: int = 256
    blocks: int = 2
    classes: int = 10
    pe_size: int = 63
    pe_learned: bool = False
    dropout: float = 0.1
    attention: str = "softmax"

    family: ClassVar[str] = "audio"

    @property
    def d_in(self) -> int:
        """Values per token: ``n_mels * patch``."""
        return self.n_mels * self.patch

    def make_embedding(self) -> nn.Module:
        """Token embedding of this family (the conv front-end)."""
        return MelPatchEmbedding(self.n_mels, self.patch, self.channels, self.d_model)

    def embedding_macs(self) -> int:
        """Multiply-accumulates of the front-end per token (conv weights x outputs + projection)."""
        c = self.channels
        return self.patch * 3 * (self.n_mels * c + c * c) + c * self.d_model


class LinearEmbeddingConfig:
    """What the families that embed a token with ``Linear(D_in -> d)`` share (OadTR, GTZAN).

    A plain base, not a dataclass: each family's dataclass declares its own fields and defaults,
    so the field order of its model card stays its own.
    """

    d_in: int
    d_model: int

    def make_embedding(self) -> nn.Module:
        """Token embedding of this family: ``Linear(D_in -> d)`` ("linear_encoding")."""
        return nn.Linear(self.d_in, self.d_model)

    def embedding_macs(self) -> int:
        """Multiply-accumulates of the embedding per token."""
        return self.d_in * self.d_model


@dataclass(frozen=True)
class GtzanConfig(LinearEmbeddingConfig):
    """The Continual Transformers papers' GTZAN configuration (docs/audio-setting.md).

    One token per 128-d VGGish embedding (``D_in`` = 128) of a 1 s sub-clip, one every 0.25 s, so
    a window of n = 120 tokens spans a 30 s clip; d = 192, h = 16 (d_h = 12), FFN 192, 10 genres.
    The reference code (Atamarado/continual_nystrom ``audio_classification``) embeds with
    ``Linear(128 -> 192)`` and a learned recycling table of 192 rows; here the table has
    ``pe_size`` = 2n - 1 = 239 rows so no two tokens of one window share a row (docs/continual-attention.md#positional-phase), and
    both twins use it (a window-position encoding would break continual == regular).
    """

    d_in: int = 128
    d_model: int = 192
    window: int = 120
    heads: int = 16
    ffn: int = 192
    blocks: int = 1
    classes: int = 10
    pe_size: int = 239
    pe_learned: bool = True
    dropout: float = 0.1
    attention: str = "softmax"

    family: ClassVar[str] = "gtzan"
