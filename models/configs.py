"""Model configurations, one frozen dataclass per family, saved in every model card.

* :class:`OadTRConfig` (``oadtr``): CoOadTR on frame features (paper defaults: docs/continual-attention.md#the-oad-model-and-its-protocol);
* :class:`~costream.models.audio.AudioConfig` (``audio``): log-mel patches through a conv
  front-end;
* :class:`~costream.models.audio.GtzanConfig` (``gtzan``): the papers' GTZAN setting.

Each names its family (``family``), makes its token embedding (``make_embedding``) and counts it
(``embedding_macs``); :data:`FAMILIES` maps a card's family back to its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .audio import AudioConfig, GtzanConfig, LinearEmbeddingConfig

__all__ = ["FAMILIES", "AudioConfig", "GtzanConfig", "ModelConfig", "OadTRConfig"]


@dataclass(frozen=True)
class OadTRConfig(LinearEmbeddingConfig):
    """CoOadTR configuration (paper defaults: docs/continual-attention.md#the-oad-model-and-its-protocol)."""

    d_in: int = 3072
    d_model: int = 1024
    window: int = 64
    heads: int = 8
    ffn: int = 1024
    blocks: int = 1
    classes: int = 22
    pe_size: int = 127
    pe_learned: bool = False
    dropout: float = 0.1
    attention: str = "softmax"

    family: ClassVar[str] = "oadtr"


ModelConfig = OadTRConfig | AudioConfig | GtzanConfig
FAMILIES: dict[str, type] = {"oadtr": OadTRConfig, "audio": AudioConfig, "gtzan": GtzanConfig}
