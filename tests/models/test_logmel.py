import math

import numpy as np
import pytest
import torch

from costream.models.logmel import (
    LogMelOptions,
    LogMelSpectrogram,
    hz_to_mel,
    logmel_tokens,
    mel_filterbank,
    mel_to_hz,
)


def test_mel_filterbank_hand_computed():
    # 8 kHz, 8-point FFT: bins at 0, 1, 2, 3, 4 kHz; one triangle from 0 Hz to 4 kHz whose
    # peak sits halfway in HTK mel: 700 * (sqrt(1 + 4000/700) - 1) Hz.
    c = 700 * (math.sqrt(47 / 7) - 1)
    assert mel_to_hz(hz_to_mel(4000.0) / 2) == pytest.approx(c)
    fb = mel_filterbank(1, 8, 8000)
    assert fb.shape == (5, 1)
    want = [0.0, 1000 / c, (4000 - 2000) / (4000 - c), (4000 - 3000) / (4000 - c), 0.0]
    np.testing.assert_allclose(fb[:, 0], want, rtol=1e-6)
    fb = mel_filterbank(64, 512, 16000)
    assert fb.shape == (257, 64) and fb.max() <= 1.0 and (fb.sum(axis=0) > 0).all()


def test_logmel_tone_lands_in_its_mel_band():
    fe = LogMelSpectrogram()
    assert (fe.chunk_samples, fe.dim, fe.chunk_ms) == (1280, 512, 80.0)
    t = np.arange(1280) / 16000
    tone = torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))[None]
    y = fe(tone).reshape(64, 8)  # mel-bin major
    fb = mel_filterbank(64, 512, 16000)
    assert int(y.mean(dim=1).argmax()) == int(fb[32].argmax())  # bin 32 = 1000 Hz
    with pytest.raises(ValueError, match="1280 samples"):
        fe(torch.zeros(1, 1000))
    # A whole signal, token by token, equals the chunks one at a time.
    x = np.random.default_rng(0).standard_normal(1280 * 3 + 100).astype(np.float32) * 0.1
    tokens = logmel_tokens(x, fe)
    assert tokens.shape == (3, 512)
    torch.testing.assert_close(
        torch.from_numpy(tokens[2]), fe(torch.from_numpy(x[2560:3840])[None])[0]
    )


def test_logmel_options_derived_sizes_and_refusals():
    opts = LogMelOptions(rate=8000, n_mels=32, patch=4)
    assert (opts.chunk_samples, opts.dim, opts.chunk_ms) == (640, 128, 80.0)
    fe = LogMelSpectrogram(opts)
    assert fe.options is opts and fe(torch.zeros(2, 640)).shape == (2, 128)
    for bad, match in [
        (LogMelOptions(n_mels=0), "must be positive"),
        (LogMelOptions(win_length=600), "win_length=600 must not exceed n_fft=512"),
        (LogMelOptions(patch=1), "too short for reflect padding"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad.validate()
        with pytest.raises(ValueError, match=match):
            LogMelSpectrogram(bad)
