"""Log-mel front-end: one PCM chunk -> one token of the audio model (``models/audio.py``).

The audio model consumes, per step, a patch of ``patch`` log-mel frames of ``n_mels`` bins,
flattened mel-bin major to ``(n_mels * patch,)`` (``x.reshape(n_mels, patch)`` recovers it). So
one input chunk must hold exactly ``patch * hop_length`` samples: with the defaults (16 kHz,
hop 160 = 10 ms, patch 8) that is 1280 samples = 80 ms of audio per chunk and per step
(``costream produce --chunk-ms 80``).

Per chunk, independently of the previous one (so the front-end is stateless and token-wise,
docs/continual-attention.md#token-wise-parts):

1. STFT (``torch.stft``): ``n_fft`` = 512 points, a periodic Hann window of ``win_length`` = 400
   samples (25 ms) centred in the FFT frame, hop 160, ``center=True`` with reflect padding; of the
   ``1 + L // hop`` frames the first ``patch`` are kept (frame t is centred on sample t * hop).
2. Power spectrum ``|X|^2``.
3. Mel filterbank (:func:`mel_filterbank`): HTK mel scale ``mel = 2595 log10(1 + f / 700)``,
   ``n_mels`` triangles with corners equally spaced in mel between ``f_min`` and ``f_max``
   (default rate / 2), peak 1, no area normalisation (equal to torchaudio's
   ``melscale_fbanks(..., norm=None, mel_scale="htk")``).
4. ``log(mel + 1e-6)`` (natural log).

The settings are one :class:`LogMelOptions` (the single definition of their names, defaults and
checks; the ``logmel`` backbone takes the same object). Training data for the audio model must
be made with the same module (:func:`logmel_tokens`), so that what a stream sees equals what
the model was trained on.

Example:
    >>> import torch
    >>> fe = LogMelSpectrogram(LogMelOptions(rate=16000, n_mels=64, patch=8))
    >>> fe.chunk_samples, fe(torch.zeros(2, 1280)).shape
    (1280, torch.Size([2, 512]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LogMelOptions",
    "LogMelSpectrogram",
    "hz_to_mel",
    "logmel_tokens",
    "mel_filterbank",
    "mel_to_hz",
]


@dataclass(frozen=True)
class LogMelOptions:
    """Settings of the log-mel front-end; :meth:`validate` says whether they can run.

    Args:
        rate: sample rate in Hz.
        n_mels: mel bins per frame.
        patch: spectrogram frames per token (one chunk = one model step).
        hop_length: samples between spectrogram frames.
        win_length: Hann window length in samples (at most ``n_fft``).
        n_fft: FFT size.
        f_min, f_max: the filterbank's frequency range in Hz (``f_max`` None: ``rate / 2``).
        eps: added to the mel power before the log.

    Construction does not validate (a backbone config carries these defaults even when its
    backbone has no log-mel front-end); :class:`LogMelSpectrogram` and the ``logmel`` backbone
    call :meth:`validate`.

    Example:
        >>> LogMelOptions(patch=4).chunk_samples
        640
    """

    rate: int = 16000
    n_mels: int = 64
    patch: int = 8
    hop_length: int = 160
    win_length: int = 400
    n_fft: int = 512
    f_min: float = 0.0
    f_max: float | None = None
    eps: float = 1e-6

    @property
    def chunk_samples(self) -> int:
        """Samples per chunk (= per model step): ``patch * hop_length``."""
        return self.patch * self.hop_length

    @property
    def dim(self) -> int:
        """Values per token: ``n_mels * patch``."""
        return self.n_mels * self.patch

    @property
    def chunk_ms(self) -> float:
        """Chunk duration in ms."""
        return 1000.0 * self.chunk_samples / self.rate

    def validate(self) -> None:
        """Raise ``ValueError``, in a sentence, if the front-end cannot run with these settings."""
        sizes = (self.rate, self.n_mels, self.patch, self.hop_length, self.win_length, self.n_fft)
        if min(sizes) < 1:
            raise ValueError("rate, n_mels, patch, hop_length, win_length, n_fft must be positive.")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length={self.win_length} must not exceed n_fft={self.n_fft}.")
        if self.n_fft // 2 >= self.chunk_samples:
            raise ValueError(
                f"A chunk of {self.chunk_samples} samples is too short for reflect padding of "
                f"n_fft // 2 = {self.n_fft // 2}; use a larger patch or hop_length."
            )


def hz_to_mel(f: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray | float:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, rate: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """HTK triangular mel filterbank, ``float32`` of shape (n_fft // 2 + 1, n_mels).

    Column m is the triangle rising linearly from corner ``m`` to 1 at corner ``m + 1`` and
    falling to 0 at corner ``m + 2``, evaluated at the FFT bin frequencies ``k * rate / n_fft``;
    the ``n_mels + 2`` corners are equally spaced in HTK mel between ``f_min`` and ``f_max``.
    """
    f_max = rate / 2.0 if f_max is None else float(f_max)
    if n_mels < 1 or n_fft < 2 or rate <= 0:
        raise ValueError(f"n_mels, n_fft and rate must be positive, got {n_mels}, {n_fft}, {rate}.")
    if not 0.0 <= f_min < f_max <= rate / 2.0:
        raise ValueError(
            f"Need 0 <= f_min < f_max <= rate / 2 = {rate / 2}, got f_min={f_min}, f_max={f_max}."
        )
    freqs = np.arange(n_fft // 2 + 1, dtype=np.float64) * rate / n_fft  # (F,)
    mels = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)  # (M+2,)
    corners = np.asarray(mel_to_hz(mels))  # (M+2,)
    left, centre, right = corners[:-2], corners[1:-1], corners[2:]  # (M,) each
    up = (freqs[:, None] - left) / (centre - left)  # (F, M)
    down = (right - freqs[:, None]) / (right - centre)  # (F, M)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class LogMelSpectrogram(nn.Module):
    """PCM chunks (B, patch * hop_length) in [-1, 1) -> log-mel tokens (B, n_mels * patch).

    Has no parameters (window and filterbank are non-persistent buffers), so it needs no weights.
    Raises ``ValueError`` for settings :meth:`LogMelOptions.validate` refuses, and when a chunk
    does not hold exactly :attr:`chunk_samples` samples.
    """

    window: Tensor  # (win_length,) buffer
    fb: Tensor  # (F, M) buffer

    def __init__(self, options: LogMelOptions | None = None) -> None:
        super().__init__()
        options = LogMelOptions() if options is None else options
        options.validate()
        self.options = options
        self.rate, self.n_mels, self.patch = options.rate, options.n_mels, options.patch
        self.hop_length, self.win_length = options.hop_length, options.win_length
        self.n_fft, self.eps = options.n_fft, options.eps
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        fb = mel_filterbank(self.n_mels, self.n_fft, self.rate, options.f_min, options.f_max)
        self.register_buffer("fb", torch.from_numpy(fb), persistent=False)  # (F, M)

    @property
    def chunk_samples(self) -> int:
        """Samples per chunk (= per model step): ``patch * hop_length``."""
        return self.options.chunk_samples

    @property
    def dim(self) -> int:
        """Values per token: ``n_mels * patch``."""
        return self.options.dim

    @property
    def chunk_ms(self) -> float:
        """Chunk duration in ms."""
        return self.options.chunk_ms

    def forward(self, x: Tensor) -> Tensor:
        """Log-mel tokens of a batch of chunks: (B, chunk_samples) -> (B, n_mels * patch)."""
        if x.dim() != 2 or x.shape[1] != self.chunk_samples:
            raise ValueError(
                f"Expected chunks of {self.chunk_samples} samples ({self.patch} frames x hop "
                f"{self.hop_length} at {self.rate} Hz), got shape {tuple(x.shape)}."
            )
        B = x.shape[0]
        spec = torch.stft(
            x.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # (B, F, 1 + L // hop)
        power = spec[:, :, : self.patch].abs().pow(2)  # (B, F, patch)
        mel = torch.einsum("bft,fm->bmt", power, self.fb)  # (B, n_mels, patch)
        return torch.log(mel + self.eps).reshape(B, -1)  # (B, n_mels * patch), mel-bin major


def logmel_tokens(samples: np.ndarray, frontend: LogMelSpectrogram) -> np.ndarray:
    """A whole mono signal -> ``float32`` (T, n_mels * patch), one token per full chunk.

    Equal, chunk for chunk, to what ``ExtractFeatures(backbone="logmel")`` computes on a stream
    of ``frontend.chunk_samples``-sample chunks (for making training data); a trailing partial
    chunk is dropped.
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    T = len(x) // frontend.chunk_samples
    if T == 0:
        return np.zeros((0, frontend.dim), np.float32)
    chunks = torch.from_numpy(x[: T * frontend.chunk_samples].reshape(T, -1))  # (T, L)
    with torch.no_grad():
        return frontend(chunks).numpy()
