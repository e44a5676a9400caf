"""Backbones by name: which frames each takes, its options, and how its module is built.

The families (:data:`BACKBONES`), each built from one :class:`BackboneConfig` (cheap, picklable;
the module itself is built only in :meth:`FeatureModelHandler.load_model
<costream.transforms.feature_handler.FeatureModelHandler.load_model>`, once per worker process):

* ``resnet18`` / ``resnet18_small``: :func:`costream.models.resnet.resnet18` without its
  classifier, RGB ``uint8`` (B, H, W, 3) -> ``float32`` (B, 512 x width). ``resnet18`` has width
  1 (D = 512) and 224 x 224 input; ``resnet18_small`` has width 0.25 (D = 128) and 112 x 112
  input, for CPU demos and tests. Weights come from a safetensors file (``weights=PATH``, checked
  key by key by :func:`costream.models.weights.load_weights`; torchvision's ``resnet18`` weights
  without ``fc.*`` load as they are); ``weights="random"`` gives seeded random weights (for tests
  and demos only) and must be asked for explicitly.
* ``logmel``: :class:`costream.models.logmel.LogMelSpectrogram`, one L16 PCM chunk of
  ``patch * hop_length`` samples -> one token (``n_mels * patch`` values) of the audio model;
  its settings are :attr:`BackboneConfig.logmel`.
* ``vggish``: the papers' audio setting (docs/audio-setting.md): one L16 PCM chunk of 0.25 s
  (4000 samples at 16 kHz) per record and per token. ``ExtractFeatures`` first assembles each
  stream's last 1 s (:class:`~costream.transforms.subclips.AssembleSubclips`, the previous 0.75 s
  in Beam keyed state, silence before a stream's first chunk and after a gap), then
  :class:`~costream.models.vggish.VGGishFrontEnd` turns each 1 s sub-clip into a 128-d
  embedding. Weights: a safetensors file written by ``costream.models.vggish.save_vggish`` (its
  metadata gives the architecture; converted torchvggish weights load as the full network), or
  ``"random"`` (seeded; the full-size network).
* ``identity``: precomputed ``application/x-costream-features`` vectors pass through (optionally
  checked against ``dim``).

This module holds no Beam code: the Beam side is :mod:`costream.transforms.feature_handler` (the
``ModelHandler``) and :mod:`costream.transforms.features` (``ExtractFeatures``).

Example:
    >>> import torch
    >>> net = BackboneConfig("resnet18_small", weights="random").build()
    >>> net(torch.zeros(2, 112, 112, 3, dtype=torch.uint8)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from costream.models import vggish
from costream.models.logmel import LogMelOptions, LogMelSpectrogram
from costream.models.resnet import IdentityBackbone, fold_batch_norm, resnet18, resnet_width
from costream.models.weights import WeightsError, load_weights, weights_sha256
from costream.transforms.decode import image_size_hw
from costream.transforms.records import DecodedFrame

__all__ = ["BACKBONES", "RANDOM", "BackboneConfig"]

RANDOM = "random"


@dataclass(frozen=True)
class _Family:
    kind: str  # the DecodedFrame.kind it accepts
    width: float | None = None
    input_size: int | None = None
    weighted: bool = False  # takes weights: a safetensors path or "random"
    subclips: bool = False  # takes each stream's last 1 s, assembled from 0.25 s chunks


_IMAGE_FAMILIES: dict[str, Any] = dict(kind="image", weighted=True)


BACKBONES: dict[str, _Family] = {
    "resnet18": _Family(**_IMAGE_FAMILIES, width=1.0, input_size=224),
    "resnet18_small": _Family(**_IMAGE_FAMILIES, width=0.25, input_size=112),
    "logmel": _Family("audio"),
    "vggish": _Family("audio", weighted=True, subclips=True),
    "identity": _Family("features"),
}
"""Backbone names accepted by :class:`ExtractFeatures` and what they take."""


@dataclass(frozen=True)
class BackboneConfig:
    """A backbone by name plus its options; validated here, built by :meth:`build`.

    Args:
        name: one of :data:`BACKBONES`.
        weights: ResNets and ``vggish``: a safetensors path, or ``"random"`` for seeded random
            weights (must be explicit); ``logmel`` / ``identity`` have no weights and take None.
        seed: the seed of ``weights="random"``.
        width: ResNet width multiplier (default by name: 1.0 / 0.25).
        input_size: ResNet input (height, width) or an int (default by name: 224 / 112).
        logmel: the audio front-end settings: ``logmel`` uses them all, ``vggish`` only
            ``rate``, which must be 16000 (its chunks are 0.25 s, its sub-clips 1 s).
        dim: ``identity``: the expected feature dim (None accepts any, per record).
    """

    name: str
    weights: str | None = None
    seed: int = 0
    width: float | None = None
    input_size: int | tuple[int, int] | None = None
    logmel: LogMelOptions = LogMelOptions()
    dim: int | None = None

    def __post_init__(self) -> None:
        family = BACKBONES.get(self.name)
        if family is None:
            raise ValueError(
                f"Unknown backbone {self.name!r}; choose one of {', '.join(BACKBONES)}."
            )
        if family.weighted:
            if self.weights is None:
                raise ValueError(
                    f"Backbone {self.name!r} needs weights: a safetensors file path, or "
                    f"weights='random' for seeded random weights (tests and demos only)."
                )
            if not isinstance(self.weights, str | Path) or not str(self.weights):
                raise ValueError(f"weights must be a file path or 'random', got {self.weights!r}.")
        if family.kind == "image":
            if self.width is not None and not self.width > 0:
                raise ValueError(f"width must be positive, got {self.width!r}.")
            if self.input_size is not None:
                image_size_hw(self.input_size)
        if not family.weighted and self.weights is not None:
            raise ValueError(
                f"Backbone {self.name!r} has no weights; leave weights unset (got {self.weights!r})."
            )
        if family.subclips and self.rate != vggish.VGGISH_RATE:
            raise ValueError(
                f"Backbone {self.name!r} takes {vggish.VGGISH_RATE} Hz audio (rate: "
                f"{vggish.VGGISH_RATE}); got rate {self.rate}. Resample at the producer "
                f"(costream produce --rate {vggish.VGGISH_RATE})."
            )
        elif family.kind == "audio":
            LogMelSpectrogram(self.logmel)  # validates the settings (cheap)
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim <= 0):
            raise ValueError(f"dim must be a positive int, got {self.dim!r}.")

    @property
    def rate(self) -> int:
        """Sample rate in Hz that audio backbones take (``logmel.rate``)."""
        return self.logmel.rate

    @property
    def kind(self) -> str:
        """The :attr:`DecodedFrame.kind` this backbone takes: image, audio or features."""
        return BACKBONES[self.name].kind

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) images are resized to, for image backbones; else None."""
        if self.kind != "image":
            return None
        size = self.input_size or BACKBONES[self.name].input_size
        assert size is not None  # every image family has a default input_size
        return image_size_hw(size)

    @property
    def feature_dim(self) -> int | None:
        """D of the output features (None for ``identity`` without ``dim``)."""
        if self.kind == "image":
            return resnet_width(512, self._width)
        if self.name == "vggish":
            return self._vggish_config().embedding
        if self.kind == "audio":
            return self.logmel.dim
        return self.dim

    @property
    def chunk_samples(self) -> int | None:
        """Samples per audio chunk (one record, one token), else None."""
        if self.subclip_samples is not None:
            return vggish.TOKEN_HOP_SAMPLES  # 0.25 s
        return self.logmel.chunk_samples if self.kind == "audio" else None

    @property
    def subclip_samples(self) -> int | None:
        """Samples per sub-clip the backbone reads (``vggish``: 1 s), else None (one chunk)."""
        return vggish.SUBCLIP_SAMPLES if BACKBONES[self.name].subclips else None

    @property
    def _width(self) -> float:
        """The ResNet width multiplier: ``width``, else the family's default (image families)."""
        width = self.width or BACKBONES[self.name].width
        assert width is not None  # every image family has a default width
        return width

    @property
    def _weights(self) -> str:
        """``weights`` of a family that takes them (``__post_init__`` requires it there)."""
        assert self.weights is not None
        return self.weights

    def _vggish_config(self) -> vggish.VGGishConfig:
        """The VGGish architecture: the full one for random weights, else the file's metadata."""
        if self.weights == RANDOM or not Path(self._weights).is_file():
            return vggish.VGGishConfig()
        return _vggish_file_config(self._weights)

    def identity(self) -> str:
        """``name@<weights sha256 prefix>`` (``@random-seed<N>`` for random weights)."""
        if not BACKBONES[self.name].weighted:
            return self.name
        if self.weights == RANDOM:
            return f"{self.name}@random-seed{self.seed}"
        return f"{self.name}@{weights_sha256(self._weights)[:12]}"

    def build(self, fold: bool = True) -> nn.Module:
        """Build the module in eval mode, loading weights (raises ``WeightsError`` on a bad file).

        ResNets come with their BatchNorms folded into the convolutions (``fold_batch_norm``:
        the same function, faster); ``fold=False`` keeps the module whose ``state_dict`` is the
        weights file's (to save or fine-tune it).
        """
        if self.name == "vggish":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self.weights == RANDOM:
                    return vggish.VGGishFrontEnd(vggish.VGGishConfig()).eval()
                return vggish.VGGishFrontEnd(vggish=vggish.load_vggish(self._weights)).eval()
        if self.kind == "audio":
            return LogMelSpectrogram(self.logmel).eval()
        if self.kind == "features":
            return IdentityBackbone().eval()
        width = self._width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = resnet18(width)
        if self.weights != RANDOM:
            load_weights(net, self._weights)
        return fold_batch_norm(net.eval()) if fold else net.eval()

    def check(self, frame: DecodedFrame) -> str | None:
        """Why ``frame`` does not fit this backbone, as a sentence; None when it fits."""
        if frame.kind != self.kind:
            return (
                f"Backbone {self.name!r} takes {self.kind} records; this record holds {frame.kind}."
            )
        shape, dtype = tuple(frame.data.shape), np.dtype(frame.data.dtype)  # an NdArray or array
        if self.kind == "image":
            size = self.image_size
            assert size is not None  # an image backbone's
            want = (*size, 3)
            if shape != want or dtype != np.uint8:
                return f"Backbone {self.name!r} takes uint8 images of shape {want}; got {dtype} {shape}."
        elif self.subclip_samples is not None:
            if frame.rate != self.rate:
                return f"Backbone {self.name!r} takes audio at {self.rate} Hz; this chunk is at {frame.rate} Hz."
            if shape != (self.subclip_samples,):
                return (
                    f"Backbone {self.name!r} takes sub-clips of {self.subclip_samples} samples "
                    f"(1 s at {self.rate} Hz, assembled from each stream's chunks); got {shape[0]}."
                )
        elif self.kind == "audio":
            if frame.rate != self.rate:
                return f"Backbone 'logmel' takes audio at {self.rate} Hz; this chunk is at {frame.rate} Hz."
            chunk = self.chunk_samples
            assert chunk is not None  # an audio backbone's
            if shape != (chunk,):
                return (
                    f"Backbone 'logmel' takes chunks of {chunk} samples "
                    f"({1000 * chunk / self.rate:g} ms at {self.rate} Hz, one token of "
                    f"{self.logmel.patch} frames); this chunk holds {shape[0]} samples."
                )
        elif self.dim is not None and shape != (self.dim,):
            return f"Backbone 'identity' expects features of dim {self.dim}; got dim {shape[0]}."
        return None

    def check_chunk(self, frame: DecodedFrame) -> str | None:
        """Why the chunk ``frame`` cannot be assembled into sub-clips (``vggish``); None when it can."""
        if frame.kind != self.kind:
            return (
                f"Backbone {self.name!r} takes {self.kind} records; this record holds {frame.kind}."
            )
        if frame.rate != self.rate:
            return f"Backbone {self.name!r} takes audio at {self.rate} Hz; this chunk is at {frame.rate} Hz."
        n = tuple(frame.data.shape)
        if n != (self.chunk_samples,):
            return (
                f"Backbone {self.name!r} takes chunks of {self.chunk_samples} samples (0.25 s at "
                f"{self.rate} Hz, one token: costream produce --chunk-ms 250); this chunk holds "
                f"{n[0] if len(n) == 1 else n} samples."
            )
        return None


def _vggish_file_config(path: str | Path) -> vggish.VGGishConfig:
    """The architecture in a VGGish weights file's metadata (``save_vggish``), without loading it.

    Files without it (converted torchvggish weights) are the full network, as ``load_vggish``
    reads them. Raises ``WeightsError`` for a file safetensors cannot read.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for unreadable files
        raise WeightsError(f"Cannot read weights file {path}: {e}.") from e
    raw = json.loads(meta.get(vggish._CONFIG_KEY, "{}"))  # the key save_vggish writes
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return vggish.VGGishConfig(**fields)
