"""VGGish front-end: 16 kHz PCM -> log-mel patches (96 frames x 64 mels) -> 128-d embeddings.

The papers' audio setting (docs/audio-setting.md, zoo family ``gtzan``) feeds the transformer one
VGGish embedding per token: a 1 s sub-clip every 0.25 s. This file is the front-end that makes
those tokens from PCM, as Hershey et al. 2017 ("CNN architectures for large-scale audio
classification") and the AudioSet release of VGGish define it:

1. **Log-mel frames** (:func:`log_mel_frames`; VGGish's ``mel_features.log_mel_spectrogram``):
   16 kHz mono in [-1, 1); frames of 400 samples (25 ms) every 160 samples (10 ms), no padding,
   so L samples give ``1 + (L - 400) // 160`` frames; a periodic Hann window; the magnitude
   (not power) of a 512-point real FFT; 64 mel bands between 125 and 7500 Hz (HTK mel scale
   ``1127 ln(1 + f / 700)``, triangles built in the mel domain, the DC bin zeroed:
   :func:`mel_matrix`); ``log(mel + 0.01)``.
2. **Patch** (:func:`log_mel_patch`): frames 0 … 95 of a sub-clip (0.96 s, samples 0 … 15599),
   the single VGGish example of a 1 s sub-clip. :func:`vggish_patches` cuts a whole signal into
   the sub-clips of the papers' setting, one every ``hop_samples`` = 4000 (0.25 s).
3. **Network** (:class:`VGGish`): conv64-pool-conv128-pool-conv256x2-pool-conv512x2-pool (3x3
   convs, ReLU, 2x2 max-pools) -> flatten (6 x 4 x 512, in height-width-channel order as the
   TensorFlow original) -> FC 4096 -> FC 4096 -> FC 128, ReLU after each (the Keras model the
   reference code fine-tunes). Parameter names and flatten order follow the PyTorch port
   torchvggish (``features.*``, ``embeddings.*``), so its weights, converted to safetensors, load
   with :func:`load_vggish`. The AudioSet release's PCA whitening and 8-bit quantisation are
   not part of it (the papers use the raw 128-d output).

Weights are random (``VGGish(config)``, seeded by the caller) or read from a safetensors file
(:func:`load_vggish`, checked key by key by ``costream.models.weights``); nothing is downloaded.
torchaudio does not import in this environment, and its mel filterbank builds the triangles in
Hz rather than mel anyway, so everything here is plain torch.

Cost: 863,895,552 MACs per embedding with the full network (``flops.vggish_macs``), against
about 0.3 M for a continual one-block transformer step in this setting.

Example:
    >>> _ = torch.manual_seed(0)
    >>> fe = VGGishFrontEnd(VGGishConfig(channels=(4, 8, 8, 8, 16, 16), fc=(32, 32))).eval()
    >>> fe(torch.zeros(2, SUBCLIP_SAMPLES)).shape
    torch.Size([2, 128])
    >>> vggish_patches(torch.zeros(30 * VGGISH_RATE)).shape  # 30 s -> 117 full 1 s sub-clips
    torch.Size([117, 96, 64])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .weights import WeightsError, load_weights, save_weights

__all__ = [
    "FFT_LENGTH",
    "HOP_SAMPLES",
    "NUM_MELS",
    "PATCH_FRAMES",
    "PATCH_SAMPLES",
    "SUBCLIP_SAMPLES",
    "TOKEN_HOP_SAMPLES",
    "VGGISH_RATE",
    "WINDOW_SAMPLES",
    "VGGish",
    "VGGishConfig",
    "VGGishFrontEnd",
    "load_vggish",
    "log_mel_frames",
    "log_mel_patch",
    "mel_matrix",
    "save_vggish",
    "vggish_patches",
]

VGGISH_RATE = 16000  # Hz, mono
WINDOW_SAMPLES = 400  # 25 ms STFT window
HOP_SAMPLES = 160  # 10 ms between log-mel frames
FFT_LENGTH = 512  # next power of two >= 400
NUM_MELS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s of frames per example
PATCH_SAMPLES = WINDOW_SAMPLES + (PATCH_FRAMES - 1) * HOP_SAMPLES  # 15600: what one patch reads
SUBCLIP_SAMPLES = VGGISH_RATE  # the papers' 1 s sub-clips
TOKEN_HOP_SAMPLES = VGGISH_RATE // 4  # a new sub-clip (token) every 0.25 s
_CONFIG_KEY = "costream.vggish"


# -- log-mel patches ----------------------------------------------------------------------------
def _hz_to_mel(hz: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)  # HTK mel scale, natural-log form


def mel_matrix(
    num_mels: int = NUM_MELS,
    fft_length: int = FFT_LENGTH,
    rate: int = VGGISH_RATE,
    f_min: float = MEL_MIN_HZ,
    f_max: float = MEL_MAX_HZ,
) -> Tensor:
    """VGGish's mel weights, float64 (fft_length // 2 + 1, num_mels): spectrum @ W -> mel bands.

    Band i is the triangle over mel corners i, i+1, i+2 (``num_mels + 2`` corners equally spaced
    in mel from ``f_min`` to ``f_max``), evaluated at the FFT bins' mel values; row 0 (DC) is 0.
    """
    if not 0.0 <= f_min < f_max <= rate / 2:
        raise ValueError(f"Need 0 <= f_min < f_max <= rate / 2 = {rate / 2}, got {f_min}, {f_max}.")
    bins = _hz_to_mel(torch.linspace(0.0, rate / 2, fft_length // 2 + 1, dtype=torch.float64))
    edges = torch.linspace(
        float(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
        float(_hz_to_mel(torch.tensor(f_max, dtype=torch.float64))),
        num_mels + 2,
        dtype=torch.float64,
    )  # (M + 2,)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    rising = (bins[:, None] - lower) / (centre - lower)  # (F, M)
    falling = (upper - bins[:, None]) / (upper - centre)  # (F, M)
    W = torch.clamp(torch.minimum(rising, falling), min=0.0)
    W[0] = 0.0  # VGGish drops the DC bin
    return W


def _check_rate(rate: int) -> None:
    if rate != VGGISH_RATE:
        raise ValueError(
            f"VGGish takes {VGGISH_RATE} Hz mono audio, got {rate} Hz; resample before the "
            f"front-end (VGGish itself resamples to {VGGISH_RATE} Hz)."
        )


def log_mel_frames(pcm: Tensor, rate: int = VGGISH_RATE) -> Tensor:
    """VGGish log-mel frames: PCM (..., L) in [-1, 1) -> (..., 1 + (L - 400) // 160, 64).

    Frame j reads samples [160 j, 160 j + 400). Fewer than 400 samples give 0 frames.
    """
    _check_rate(rate)
    x = pcm if pcm.is_floating_point() else pcm.float()
    L = x.shape[-1]
    if L < WINDOW_SAMPLES:
        return x.new_zeros(*x.shape[:-1], 0, NUM_MELS)
    frames = x.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES)  # (..., T, 400)
    window = torch.hann_window(WINDOW_SAMPLES, periodic=True, dtype=x.dtype, device=x.device)
    spectrum = torch.fft.rfft(frames * window, n=FFT_LENGTH).abs()  # (..., T, 257) magnitude
    W = mel_matrix().to(dtype=x.dtype, device=x.device)  # (257, 64)
    return torch.log(spectrum @ W + LOG_OFFSET)  # (..., T, 64)


def log_mel_patch(subclips: Tensor, rate: int = VGGISH_RATE) -> Tensor:
    """The VGGish example of each sub-clip: (B, L) PCM, L >= 15600 -> (B, 96, 64).

    Frames 0 … 95 (samples 0 … 15599); a 1 s sub-clip (16000 samples) has 98 frames and VGGish
    keeps these 96. Raises ``ValueError`` for sub-clips shorter than 15600 samples.
    """
    if subclips.dim() != 2 or subclips.shape[1] < PATCH_SAMPLES:
        raise ValueError(
            f"Expected sub-clips (B, L) with L >= {PATCH_SAMPLES} samples (96 frames of 10 ms at "
            f"{VGGISH_RATE} Hz; the papers use 1 s = {SUBCLIP_SAMPLES}), got {tuple(subclips.shape)}."
        )
    return log_mel_frames(subclips[:, :PATCH_SAMPLES], rate)  # (B, 96, 64)


def vggish_patches(
    pcm: Tensor,
    rate: int = VGGISH_RATE,
    hop_samples: int = TOKEN_HOP_SAMPLES,
    subclip_samples: int = SUBCLIP_SAMPLES,
) -> Tensor:
    """A whole mono signal (L,) -> one patch per full sub-clip: (T, 96, 64).

    Sub-clip k covers samples [k hop, k hop + subclip_samples); T = 1 + (L - subclip) // hop
    (0 if the signal is shorter). Patch k equals ``log_mel_patch(pcm[k hop : k hop + subclip])``;
    the frames are computed once (``hop_samples`` must be a multiple of 160).
    """
    if pcm.dim() != 1:
        raise ValueError(f"Expected a mono signal (L,), got shape {tuple(pcm.shape)}.")
    if hop_samples < 1 or hop_samples % HOP_SAMPLES:
        raise ValueError(
            f"hop_samples={hop_samples} must be a positive multiple of the {HOP_SAMPLES}-sample "
            f"frame hop (0.25 s = {TOKEN_HOP_SAMPLES})."
        )
    if subclip_samples < PATCH_SAMPLES:
        raise ValueError(f"subclip_samples={subclip_samples} < {PATCH_SAMPLES} (one patch).")
    T = (
        1 + (pcm.shape[0] - subclip_samples) // hop_samples
        if pcm.shape[0] >= subclip_samples
        else 0
    )
    if T == 0:
        return pcm.new_zeros(0, PATCH_FRAMES, NUM_MELS, dtype=torch.float32)
    frames = log_mel_frames(pcm[: (T - 1) * hop_samples + PATCH_SAMPLES], rate)  # (F, 64)
    step = hop_samples // HOP_SAMPLES  # frames per token hop: 25
    return frames.unfold(0, PATCH_FRAMES, step).transpose(1, 2)  # (T, 96, 64)


# -- the network --------------------------------------------------------------------------------
@dataclass(frozen=True)
class VGGishConfig:
    """VGGish shape: six 3x3 conv widths, the hidden FC widths, the embedding size (saved with weights)."""

    channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512)
    fc: tuple[int, ...] = (4096, 4096)
    embedding: int = 128
    final_relu: bool = True

    def __post_init__(self) -> None:
        if len(self.channels) != 6 or min(self.channels) < 1:
            raise ValueError(f"VGGish has six positive conv widths, got {self.channels}.")
        if min((*self.fc, self.embedding), default=1) < 1:
            raise ValueError(f"FC widths must be positive, got fc={self.fc}, {self.embedding}.")


_POOL_AFTER = (0, 1, 3, 5)  # conv64-pool-conv128-pool-conv256x2-pool-conv512x2-pool


class VGGish(nn.Module):
    """VGG stack on log-mel patches: (B, 96, 64) or (B, 1, 96, 64) -> (B, 128) embeddings.

    Deterministic in eval mode (no dropout, no batch norm): the same patch gives the same
    embedding whatever else is in the batch, up to the convolution kernels' rounding.
    """

    def __init__(self, config: VGGishConfig = VGGishConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in, H, W = 1, PATCH_FRAMES, NUM_MELS
        for i, c in enumerate(config.channels):
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            if i in _POOL_AFTER:
                layers.append(nn.MaxPool2d(2, 2))
                H, W = H // 2, W // 2
            c_in = c
        self.features = nn.Sequential(*layers)  # torchvggish's indices: 0, 3, 6, 8, 11, 13
        fcs: list[nn.Module] = []
        width = H * W * c_in  # 6 * 4 * 512 = 12288
        widths = (*config.fc, config.embedding)
        for k, out in enumerate(widths):
            fcs.append(nn.Linear(width, out))
            if k < len(widths) - 1 or config.final_relu:
                fcs.append(nn.ReLU(inplace=True))
            width = out
        self.embeddings = nn.Sequential(*fcs)

    def forward(self, patches: Tensor) -> Tensor:
        """Embed log-mel patches (B, 96, 64) (or with a channel axis) -> (B, embedding)."""
        x = patches.unsqueeze(1) if patches.dim() == 3 else patches
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, PATCH_FRAMES, NUM_MELS):
            raise ValueError(
                f"Expected log-mel patches (B, {PATCH_FRAMES}, {NUM_MELS}) or "
                f"(B, 1, {PATCH_FRAMES}, {NUM_MELS}), got {tuple(patches.shape)}."
            )
        x = self.features(x)  # (B, C, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # (B, 6 * 4 * C), height-width-channel (TF) order
        return self.embeddings(x)  # (B, embedding)


class VGGishFrontEnd(nn.Module):
    """PCM sub-clips -> VGGish embeddings: (B, L >= 15600) at 16 kHz -> (B, embedding).

    What a streaming backbone calls every 0.25 s with the last 1 s of audio of each stream
    (``(B, 16000)`` floats in [-1, 1)); the result is the (B, 128) token the ``gtzan`` models
    take. Equal to ``VGGish(log_mel_patch(subclips))``.
    """

    def __init__(self, config: VGGishConfig = VGGishConfig(), vggish: VGGish | None = None):
        super().__init__()
        self.vggish = vggish if vggish is not None else VGGish(config)

    @property
    def dim(self) -> int:
        """Values per token (the embedding size, 128)."""
        return self.vggish.config.embedding

    def forward(self, subclips: Tensor) -> Tensor:
        p = next(self.vggish.parameters())
        return self.vggish(log_mel_patch(subclips.to(p.dtype)).to(p.device))


# -- weights files ------------------------------------------------------------------------------
def save_vggish(model: VGGish | VGGishFrontEnd, path: str | Path) -> str:
    """Write the network's weights (safetensors) with its config in the metadata; returns sha256."""
    net = model.vggish if isinstance(model, VGGishFrontEnd) else model
    meta = {_CONFIG_KEY: json.dumps(asdict(net.config))}
    return save_weights(net, path, metadata=meta)


def load_vggish(path: str | Path, config: VGGishConfig | None = None) -> VGGish:
    """A :class:`VGGish` with the verified weights of ``path`` (eval mode).

    The architecture comes from ``config``, else from the file's metadata (written by
    :func:`save_vggish`), else the full VGGish (e.g. converted torchvggish weights).

    Raises:
        WeightsError: unreadable file, or keys / shapes that do not fit the architecture.
    """
    from safetensors import safe_open

    if config is None:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for unreadable files
            raise WeightsError(f"Cannot read weights file {path}: {e}.") from e
        raw = json.loads(meta[_CONFIG_KEY]) if _CONFIG_KEY in meta else {}
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        config = VGGishConfig(**raw)
    model = VGGish(config)
    load_weights(model, path)
    return model.eval()
