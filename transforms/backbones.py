"""Backbones: decoded frames -> per-frame feature vectors, batched across streams.

Three backbone families, built from one :class:`BackboneConfig` (cheap, picklable; the module
itself is built only in :meth:`FeatureModelHandler.load_model`, once per worker process):

* ``resnet18`` / ``resnet18_small``: a ResNet-18 (BasicBlock layers [2, 2, 2, 2], stage widths
  64/128/256/512 x ``width``) without its classifier: RGB ``uint8`` (B, H, W, 3) -> ImageNet
  normalisation -> CNN -> global average pool -> ``float32`` (B, 512 x width).
  ``resnet18`` has width 1 (D = 512, 11,176,512 parameters) and 224 x 224 input;
  ``resnet18_small`` has width 0.25 (D = 128) and 112 x 112 input, for CPU demos and tests.
  ``state_dict`` keys follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ``layer1.0.downsample.0`` …), so torchvision's weights without ``fc.*``, saved as safetensors,
  load as they are. Weights come from a safetensors file (``weights=PATH``, checked key by key by
  :func:`costream.models.weights.load_weights`); ``weights="random"`` gives seeded random weights
  (for tests and demos only) and must be asked for explicitly.
* ``logmel``: :class:`~costream.transforms.audio_features.LogMelSpectrogram`, one L16 PCM chunk
  of ``patch * hop_length`` samples -> one token (``n_mels * patch`` values) of the audio model.
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

:class:`ExtractFeatures` = ``DecodeFrames`` -> Beam ``RunInference`` with
:class:`FeatureModelHandler` (bounded batch size and batching delay, one model per worker process,
``torch.set_num_threads(num_threads)``) -> routing. Its outputs: ``main``
(:class:`~costream.transforms.records.FeatureRecord` rows) and ``dead_letter``
(:class:`~costream.connectors.codecs.DeadLetter` rows, stage ``decode`` or ``features``).

Example:
    >>> import torch
    >>> net = BackboneConfig("resnet18_small", weights="random").build()
    >>> net(torch.zeros(2, 112, 112, 3, dtype=torch.uint8)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from costream.connectors import codecs
from costream.connectors.codecs import DeadLetter
from costream.models import vggish
from costream.models.weights import WeightsError, load_weights, weights_sha256
from costream.transforms.audio_features import LogMelSpectrogram
from costream.transforms.counters import Counter
from costream.transforms.decode import DecodeFrames, decode_record, image_size_hw
from costream.transforms.records import (
    DEAD_LETTER,
    MAIN,
    DecodedFrame,
    FeatureRecord,
    TaggedOutputs,
    as_array,
    feature_record,
    to_dead_letter,
    typed_outputs,
)
from costream.transforms.subclips import AssembleSubclips, SubclipAssembler
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConfig",
    "ExtractFeatures",
    "FeatureModelHandler",
    "IdentityBackbone",
    "ResNet",
    "normalize_imagenet",
    "record_features",
    "resnet18",
]

_LOG = logging.getLogger(__name__)
_METRICS_NS = "costream.features"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = "random"


# -- the CNN ---------------------------------------------------------------------------------------
def normalize_imagenet(images: Tensor) -> Tensor:
    """RGB ``uint8`` (B, H, W, 3) -> ``float32`` (B, 3, H, W), ``(x / 255 - mean) / std``."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected RGB images (B, H, W, 3), got shape {tuple(images.shape)}.")
    x = images.permute(0, 3, 1, 2).float().div(255.0)  # (B, 3, H, W)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + skip)


class ResNet(nn.Module):
    """ResNet feature extractor: RGB ``uint8`` (B, H, W, 3) -> ``float32`` (B, widths[-1]).

    Normalisation (ImageNet mean/std) is part of the module; the classifier head is not.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), width: float = 1.0) -> None:
        super().__init__()
        if width <= 0 or len(layers) != 4 or min(layers) < 1:
            raise ValueError(
                f"Need width > 0 and four positive layer counts, got {width}, {layers}."
            )
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.dim = widths[-1]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = widths[0]
        for i, (c, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            blocks = [
                BasicBlock(c_in if j == 0 else c, c, stride if j == 0 else 1) for j in range(n)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        x = normalize_imagenet(images)  # (B, 3, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, c0, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, D): global average pool


def resnet18(width: float = 1.0) -> ResNet:
    """ResNet-18 trunk ([2, 2, 2, 2] basic blocks), feature dim ``512 * width``, random weights."""
    return ResNet((2, 2, 2, 2), width)


class IdentityBackbone(nn.Module):
    """Precomputed features pass through: (B, D) -> (B, D) as ``float32``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.float()


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Family:
    kind: str  # the DecodedFrame.kind it accepts
    width: float | None = None
    input_size: int | None = None
    weighted: bool = False  # takes weights: a safetensors path or "random"
    subclips: bool = False  # takes each stream's last 1 s, assembled from 0.25 s chunks


_IMAGE_FAMILIES = dict(kind="image", weighted=True)


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
        rate, n_mels, patch, hop_length, win_length, n_fft: ``logmel`` front-end settings
            (``vggish`` takes ``rate`` = 16000 only: its chunks are 0.25 s, its sub-clips 1 s).
        dim: ``identity``: the expected feature dim (None accepts any, per record).
    """

    name: str
    weights: str | None = None
    seed: int = 0
    width: float | None = None
    input_size: int | tuple[int, int] | None = None
    rate: int = 16000
    n_mels: int = 64
    patch: int = 8
    hop_length: int = 160
    win_length: int = 400
    n_fft: int = 512
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
            LogMelSpectrogram(**self._logmel_kwargs())  # validates the settings (cheap)
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim <= 0):
            raise ValueError(f"dim must be a positive int, got {self.dim!r}.")

    @property
    def kind(self) -> str:
        """The :attr:`DecodedFrame.kind` this backbone takes: image, audio or features."""
        return BACKBONES[self.name].kind

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) images are resized to, for image backbones; else None."""
        if self.kind != "image":
            return None
        return image_size_hw(self.input_size or BACKBONES[self.name].input_size)

    @property
    def feature_dim(self) -> int | None:
        """D of the output features (None for ``identity`` without ``dim``)."""
        if self.kind == "image":
            return max(1, round(512 * (self.width or BACKBONES[self.name].width)))
        if self.name == "vggish":
            return self._vggish_config().embedding
        if self.kind == "audio":
            return self.n_mels * self.patch
        return self.dim

    @property
    def chunk_samples(self) -> int | None:
        """Samples per audio chunk (one record, one token), else None."""
        if self.subclip_samples is not None:
            return vggish.TOKEN_HOP_SAMPLES  # 0.25 s
        return self.patch * self.hop_length if self.kind == "audio" else None

    @property
    def subclip_samples(self) -> int | None:
        """Samples per sub-clip the backbone reads (``vggish``: 1 s), else None (one chunk)."""
        return vggish.SUBCLIP_SAMPLES if BACKBONES[self.name].subclips else None

    def _vggish_config(self) -> vggish.VGGishConfig:
        """The VGGish architecture: the full one for random weights, else the file's metadata."""
        if self.weights == RANDOM or not Path(self.weights).is_file():
            return vggish.VGGishConfig()
        return _vggish_file_config(self.weights)

    def _logmel_kwargs(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "n_mels": self.n_mels,
            "patch": self.patch,
            "hop_length": self.hop_length,
            "win_length": self.win_length,
            "n_fft": self.n_fft,
        }

    def identity(self) -> str:
        """``name@<weights sha256 prefix>`` (``@random-seed<N>`` for random weights)."""
        if not BACKBONES[self.name].weighted:
            return self.name
        if self.weights == RANDOM:
            return f"{self.name}@random-seed{self.seed}"
        return f"{self.name}@{weights_sha256(self.weights)[:12]}"

    def build(self) -> nn.Module:
        """Build the module in eval mode, loading weights (raises ``WeightsError`` on a bad file)."""
        if self.name == "vggish":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self.weights == RANDOM:
                    return vggish.VGGishFrontEnd(vggish.VGGishConfig()).eval()
                return vggish.VGGishFrontEnd(vggish=vggish.load_vggish(self.weights)).eval()
        if self.kind == "audio":
            return LogMelSpectrogram(**self._logmel_kwargs()).eval()
        if self.kind == "features":
            return IdentityBackbone().eval()
        width = self.width or BACKBONES[self.name].width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = resnet18(width)
        if self.weights != RANDOM:
            load_weights(net, self.weights)
        return net.eval()

    def check(self, frame: DecodedFrame) -> str | None:
        """Why ``frame`` does not fit this backbone, as a sentence; None when it fits."""
        if frame.kind != self.kind:
            return (
                f"Backbone {self.name!r} takes {self.kind} records; this record holds {frame.kind}."
            )
        shape, dtype = tuple(frame.data.shape), np.dtype(frame.data.dtype)  # an NdArray or array
        if self.kind == "image":
            want = (*self.image_size, 3)
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
            if shape != (self.chunk_samples,):
                return (
                    f"Backbone 'logmel' takes chunks of {self.chunk_samples} samples "
                    f"({1000 * self.chunk_samples / self.rate:g} ms at {self.rate} Hz, one token of "
                    f"{self.patch} frames); this chunk holds {shape[0]} samples."
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
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for unreadable files
        raise WeightsError(f"Cannot read weights file {path}: {e}.") from e
    raw = json.loads(meta.get(vggish._CONFIG_KEY, "{}"))  # the key save_vggish writes
    return vggish.VGGishConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    )


# -- Beam: model handler ---------------------------------------------------------------------------
class _Failed(NamedTuple):
    """A frame the backbone could not turn into features, and why (routed to dead letters)."""

    frame: DecodedFrame
    error: str


class _Done(NamedTuple):
    """A frame's features and its input's event time (batching re-stamps; routing restores it)."""

    record: FeatureRecord
    timestamp_us: int


class FeatureModelHandler(ModelHandler[DecodedFrame, Any, nn.Module]):
    """Beam ``ModelHandler``: batches of :class:`DecodedFrame` -> features (or failures).

    ``run_inference`` returns, per frame and in order, ``_Done(FeatureRecord, timestamp_us)`` or
    ``_Failed(frame, reason)``; :class:`ExtractFeatures` routes them.

    One backbone per worker process (Beam's shared handle; across processes too when
    ``share_across_processes``), built in ``load_model`` after ``torch.set_num_threads``. Frames
    that do not fit the backbone, and frames whose features are not finite, come back as failures
    (never as exceptions), so one bad frame never fails its batch; if the batched forward raises,
    the batch is retried frame by frame to isolate the culprit.
    """

    def __init__(
        self,
        config: BackboneConfig,
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 16,
        max_batch_duration_secs: float | None = None,
        num_threads: int = 1,
        share_across_processes: bool = False,
    ) -> None:
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"Need 1 <= min_batch_size <= max_batch_size, got {min_batch_size} and {max_batch_size}."
            )
        if max_batch_duration_secs is not None and not max_batch_duration_secs > 0:
            raise ValueError(
                f"max_batch_duration_secs must be positive (or None), got {max_batch_duration_secs}."
            )
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
        super().__init__()
        # BatchElements options via batch_elements_kwargs (Beam 2.62's ModelHandler takes no
        # constructor arguments)
        self._batching: dict[str, Any] = {
            "min_batch_size": min_batch_size,
            "max_batch_size": max_batch_size,
        }
        if max_batch_duration_secs is not None:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs
        self.config = config
        self._num_threads = num_threads
        self._share = share_across_processes

    def load_model(self) -> nn.Module:
        torch.set_num_threads(self._num_threads)
        model = self.config.build()
        _LOG.info("Loaded backbone %s", self.config.identity())
        return model

    def share_model_across_processes(self) -> bool:
        return self._share

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return dict(self._batching)

    def get_metrics_namespace(self) -> str:
        return _METRICS_NS

    def get_num_bytes(self, batch: Sequence[DecodedFrame]) -> int:
        return int(sum(len(f.data.data) for f in batch))

    def run_inference(
        self,
        batch: Sequence[DecodedFrame],
        model: nn.Module,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[_Done | _Failed]:
        out: list[_Done | _Failed | None] = [None] * len(batch)
        fit: list[int] = []
        for i, frame in enumerate(batch):
            reason = self.config.check(frame)
            if reason is None:
                fit.append(i)
            else:
                out[i] = _Failed(frame, reason)
        if self.config.kind == "features":  # identity: per record, dims may differ
            groups = [[i] for i in fit]
        else:
            groups = [fit] if fit else []
        for group in groups:
            for i, result in zip(group, self._forward(model, [batch[i] for i in group])):
                out[i] = result
        return out  # type: ignore[return-value]

    def _forward(self, model: nn.Module, frames: list[DecodedFrame]) -> list[_Done | _Failed]:
        try:
            feats = _features(model, [as_array(f.data) for f in frames])  # (B, D)
        except Exception as err:
            if len(frames) == 1:
                return [_Failed(frames[0], f"The backbone failed: {type(err).__name__}: {err}")]
            _LOG.warning("Batched backbone forward failed (%s); retrying frame by frame.", err)
            return [r for f in frames for r in self._forward(model, [f])]
        results: list[_Done | _Failed] = []
        for f, vec in zip(frames, feats):
            if not np.isfinite(vec).all():
                results.append(
                    _Failed(
                        f,
                        f"The backbone produced {int((~np.isfinite(vec)).sum())} non-finite feature values.",
                    )
                )
                continue
            results.append(_Done(feature_record(f, vec), f.timestamp_us))
        return results


def _features(model: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Stack same-shaped inputs, run the backbone, return ``float32`` (B, D) (one copy per row).

    A lone input runs as a pair (itself twice): oneDNN picks another convolution kernel for a
    batch of one, whose features differ in the 6th digit, while every batch of two or more gives
    each input bitwise the same features. So an input's features do not depend on how the
    stream's batching happened to group it, and streaming scores equal ``costream score``'s.
    """
    if len(arrays) == 1:
        return _features(model, arrays * 2)[:1]
    x = torch.from_numpy(np.stack(arrays))  # (B, ...) uint8 images / float32 chunks or vectors
    with torch.inference_mode():
        y = model(x)  # (B, D)
    return [row.copy() for row in y.float().numpy()]  # own memory per record: no shared buffer


def record_features(
    net: nn.Module, cfg: BackboneConfig, records: Iterable[Any], batch_size: int = 64
) -> np.ndarray:
    """(T, D) features of stream-contract records (``key, value, headers``), offline.

    The pipeline's own path without Beam: ``decode_record`` (decode, resize to the backbone's
    input), the backbone config's input check, then ``net`` (``cfg.build()``) in batches. For
    training on exactly what a spec's ``ExtractFeatures`` step will produce. Backbones that take
    sub-clips (``vggish``) assemble them per stream in record order, as the pipeline does.

    Raises:
        ValueError: a record does not decode or does not fit the backbone (the reason says why).
    """
    decoded = []
    assembler = None
    if cfg.subclip_samples is not None:
        assembler = SubclipAssembler(cfg.chunk_samples, cfg.subclip_samples)
    history: dict[str, bytes | None] = {}
    for rec in records:
        f = decode_record(rec.key, rec.value, rec.headers, image_size=cfg.image_size, now_ms=0)
        reason = cfg.check(f) if assembler is None else cfg.check_chunk(f)
        if reason is not None:
            raise ValueError(reason)
        x = as_array(f.data)
        if assembler is not None:
            blob, x, _ = assembler.process(history.get(f.stream_id), f.frame_index, f.ts_ms, x)
            history[f.stream_id] = blob if blob is not None else history.get(f.stream_id)
        decoded.append(x)
    rows = []
    for s in range(0, len(decoded), batch_size):
        rows.extend(_features(net, decoded[s : s + batch_size]))
    return np.stack(rows).astype(np.float32)


# -- Beam: the public transform --------------------------------------------------------------------
class _RouteFeatures(beam.DoFn):
    """RunInference outcomes -> ``main`` FeatureRecords and ``dead_letter`` rows (features)."""

    def __init__(self) -> None:
        self._ok = Counter(_METRICS_NS, "features")
        self._dead = Counter(_METRICS_NS, "features_dead_letters")

    def process(
        self,
        outcome: _Done | _Failed,
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        if isinstance(outcome, _Failed):
            self._dead.inc()
            dead = to_dead_letter(outcome.frame, outcome.error, "features")
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, _restamp(dead, outcome.frame.timestamp_us, timestamp, window)
            )
        else:
            self._ok.inc()
            yield _restamp(outcome.record, outcome.timestamp_us, timestamp, window)


def _restamp(element: Any, original_us: int, batch_ts: Timestamp, window: Any) -> TimestampedValue:
    """Give ``element`` its input's event time again, within what Beam allows.

    Batching stamps a batch with a timer's time, or, for the final flush of a window, with the
    window's *end*, which lies beyond the window's last valid timestamp: downstream grouping then
    drops those elements as late (seen with Beam 2.77's stateful ``BatchElements`` at the end of a
    bounded input). So the timestamp is the input's event time, moved forward to the batch's time
    where that is later (moving back could make it late) and capped at the window's maximum.
    """
    ts = max(Timestamp(micros=original_us), batch_ts)
    return TimestampedValue(element, min(ts, window.max_timestamp()))


class _FailedBatchToDeadLetters(beam.DoFn):
    """A batch RunInference itself failed on -> one dead letter per frame (stage features).

    Beam's dead-letter element is ``(batch, (exception type, repr(exception), traceback))``.
    """

    def __init__(self) -> None:
        self._dead = Counter(_METRICS_NS, "features_dead_letters")

    def process(
        self,
        failed: tuple[Any, Any],
        timestamp: Any = beam.DoFn.TimestampParam,
        window: Any = beam.DoFn.WindowParam,
    ) -> Iterator[Any]:
        batch, (_, exc_repr, _) = failed
        self._dead.inc(len(batch))
        for frame in batch:
            dead = to_dead_letter(
                frame,
                f"The backbone failed on a batch of {len(batch)} frames: {exc_repr}",
                "features",
            )
            yield _restamp(dead, frame.timestamp_us, timestamp, window)


# Beam's DirectRunner (SwitchingDirectRunner) runs a pipeline with processing-time timers, such
# as stateful batching's, on the BundleBasedDirectRunner.
_BUNDLE_BASED_RUNNERS = (BundleBasedDirectRunner, SwitchingDirectRunner)


def _payload_limit(value: int) -> int:
    """``max_payload_bytes``, checked to be a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"max_payload_bytes must be a positive whole number of bytes, e.g. 1048576 for 1 MiB; "
            f"got {value!r}."
        )
    return value


class ExtractFeatures(beam.PTransform):
    """Kafka records -> decoded, batched backbone features per frame, plus dead letters.

    Steps: ``Decode`` (:class:`~costream.transforms.decode.DecodeFrames`, images resized to the
    backbone's input size) -> for ``vggish`` only, ``Subclips``
    (:class:`~costream.transforms.subclips.AssembleSubclips`: each stream's last 1 s, one per
    0.25 s chunk, the previous 0.75 s in keyed state) -> ``Backbone`` (Beam ``RunInference`` with
    :class:`FeatureModelHandler`: batches of ``min_batch_size..batch_size`` frames, across
    streams, waiting at most ``max_batch_duration_secs`` for a batch to fill) -> ``Route``.

    Outputs (a :class:`~costream.transforms.records.TaggedOutputs` dict; also ``out.main`` …):

    * ``main``: :class:`~costream.transforms.records.FeatureRecord`, one per good input record,
      carrying stream id, frame index, ts_ms, arrival_ms, the original record and
      ``features`` (``float32`` (D,), D = :attr:`feature_dim`, as an
      :class:`~costream.transforms.records.NdArray` row: ``as_array`` reads it);
    * ``dead_letter``: :class:`~costream.connectors.codecs.DeadLetter` rows (original
      key/value/headers + ``error`` and ``stage``: ``decode`` for records that break the
      contract, ``features`` for records the backbone cannot take: wrong kind, size or rate,
      non-finite output, a failed forward).

    Counters (namespace ``costream.features``; also in
    :func:`costream.transforms.counters.snapshot`): ``features`` and ``features_dead_letters``
    (records the backbone could not take; the decode step counts its own, see ``DecodeFrames``).

    Every input record yields exactly one element on one of the two outputs. Its timestamp is
    the input's event time, or the batch's timestamp where that is later (see ``_restamp``: a
    batch flushed at the end of a bounded input is stamped with the window's end).

    Args:
        backbone: ``resnet18``, ``resnet18_small``, ``logmel``, ``vggish`` or ``identity``.
        weights: see :class:`BackboneConfig` (ResNets and ``vggish``: a safetensors path or
            ``"random"``).
        batch_size: the largest batch; ``min_batch_size`` the smallest Beam aims for.
        max_batch_duration_secs: longest wait for a batch to fill (stateful batching across
            bundles, for streams); None batches within a bundle only. Ignored, with a logged
            warning, on Beam's ``DirectRunner`` / ``BundleBasedDirectRunner``: that runner hands
            the batch flushed at the end of a bounded input downstream after a ``GroupByKey``
            there has already emitted its final result, so those records are lost (Beam 2.77).
            costream's embedded runner is the FnApiRunner, which batches across bundles without
            loss.
        num_threads: torch intra-op threads per worker process.
        share_across_processes: one model per machine instead of per process.
        seed, width, input_size, rate, n_mels, patch, hop_length, win_length, n_fft, dim: the
            :class:`BackboneConfig` fields of the same names (each used by one family only).
        max_payload_bytes: the largest record value accepted; a larger one is dead-lettered at
            stage ``decode`` with a reason that names both sizes, before any decoding.

    Example:
        >>> out = records | "Features" >> ExtractFeatures("resnet18_small", weights="random")  # doctest: +SKIP
        >>> features, dead = out["main"], out["dead_letter"]  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = None,
        *,
        batch_size: int = 16,
        min_batch_size: int = 1,
        max_batch_duration_secs: float | None = 0.05,
        num_threads: int = 1,
        share_across_processes: bool = False,
        seed: int = 0,
        width: float | None = None,
        input_size: int | Sequence[int] | None = None,
        rate: int = 16000,
        n_mels: int = 64,
        patch: int = 8,
        hop_length: int = 160,
        win_length: int = 400,
        n_fft: int = 512,
        dim: int | None = None,
        max_payload_bytes: int = codecs.DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__()
        self.max_payload_bytes = _payload_limit(max_payload_bytes)
        self.config = BackboneConfig(
            backbone,
            weights,
            seed=seed,
            width=width,
            input_size=input_size
            if input_size is None or isinstance(input_size, int)
            else tuple(input_size),
            rate=rate,
            n_mels=n_mels,
            patch=patch,
            hop_length=hop_length,
            win_length=win_length,
            n_fft=n_fft,
            dim=dim,
        )
        self._handler_kwargs: dict[str, Any] = {
            "min_batch_size": min_batch_size,
            "max_batch_size": batch_size,
            "max_batch_duration_secs": max_batch_duration_secs,
            "num_threads": num_threads,
            "share_across_processes": share_across_processes,
        }
        self.handler = FeatureModelHandler(self.config, **self._handler_kwargs)

    @property
    def feature_dim(self) -> int | None:
        """D of the ``main`` features (None for ``identity`` without ``dim``)."""
        return self.config.feature_dim

    def _handler_for(self, pipeline: beam.Pipeline) -> FeatureModelHandler:
        """The model handler, without stateful batching on Beam's bundle-based DirectRunner."""
        if self._handler_kwargs["max_batch_duration_secs"] is None or not isinstance(
            pipeline.runner, _BUNDLE_BASED_RUNNERS
        ):
            return self.handler
        _LOG.warning(
            "ExtractFeatures: %s runs Beam's stateful batching on its bundle-based runner, which "
            "delivers the batch flushed at the end of the input after downstream grouping has "
            "closed, so those records would be lost; batching within bundles instead "
            "(max_batch_duration_secs ignored). Use the FnApiRunner (costream run does) to batch "
            "across bundles.",
            type(pipeline.runner).__name__,
        )
        return FeatureModelHandler(
            self.config, **{**self._handler_kwargs, "max_batch_duration_secs": None}
        )

    def expand(self, pcoll: beam.PCollection) -> TaggedOutputs:
        decoded = pcoll | "Decode" >> DecodeFrames(
            image_size=self.config.image_size, max_payload_bytes=self.max_payload_bytes
        )
        frames, dead_frames = decoded[MAIN], [decoded[DEAD_LETTER]]
        if self.config.subclip_samples is not None:  # vggish: each stream's last 1 s
            subclips = frames | "Subclips" >> AssembleSubclips(
                self.config.chunk_samples, self.config.subclip_samples, self.config.check_chunk
            )
            frames = subclips[MAIN]
            dead_frames.append(subclips[DEAD_LETTER])
        handler = self._handler_for(pcoll.pipeline)
        outcomes, failed = frames | "Backbone" >> RunInference(handler).with_exception_handling()
        routed = typed_outputs(
            outcomes
            | "Route"
            >> beam.ParDo(_RouteFeatures())
            .with_output_types(FeatureRecord)
            .with_outputs(DEAD_LETTER, main=MAIN)
        )
        failed_batches = failed.failed_inferences | "FailedBatches" >> beam.ParDo(
            _FailedBatchToDeadLetters()
        ).with_output_types(DeadLetter)
        dead = (
            *dead_frames,
            routed[DEAD_LETTER],
            failed_batches,
        ) | "DeadLetters" >> beam.Flatten().with_output_types(DeadLetter)
        return TaggedOutputs({MAIN: routed[MAIN], DEAD_LETTER: dead})
