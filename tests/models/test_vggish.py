"""VGGish front-end: log-mel framing against a numpy oracle of VGGish's mel_features, patch hop,
network shapes and cost, determinism, safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from costream.models.flops import measured_macs, vggish_macs
from costream.models.vggish import (
    PATCH_SAMPLES,
    SUBCLIP_SAMPLES,
    TOKEN_HOP_SAMPLES,
    VGGish,
    VGGishConfig,
    VGGishFrontEnd,
    load_vggish,
    log_mel_frames,
    log_mel_patch,
    mel_matrix,
    save_vggish,
    vggish_patches,
)
from costream.models.weights import WeightsError, save_weights

TINY = VGGishConfig(channels=(4, 8, 8, 8, 16, 16), fc=(32, 32))


def _np_log_mel(x: np.ndarray) -> np.ndarray:
    """VGGish's mel_features.log_mel_spectrogram at its defaults, restated in numpy (float64)."""
    n = 1 + (len(x) - 400) // 160
    frames = np.stack([x[160 * j : 160 * j + 400] for j in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, 512))  # (n, 257)
    hz_to_mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    bins = hz_to_mel(np.linspace(0.0, 8000.0, 257))
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)
    W = np.empty((257, 64))
    for i in range(64):
        lo, c, hi = edges[i : i + 3]
        W[:, i] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    W[0, :] = 0.0
    return np.log(spec @ W + 0.01)


def _signal(seconds: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    return torch.from_numpy(x)  # float64


def test_log_mel_matches_vggish_mel_features():
    x = _signal(1.3)
    got = log_mel_frames(x)
    assert got.shape == (1 + (len(x) - 400) // 160, 64) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _np_log_mel(x.numpy()), rtol=0, atol=1e-9)
    got32 = log_mel_frames(x.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), _np_log_mel(x.numpy()), atol=2e-4)
    assert log_mel_frames(torch.zeros(399)).shape == (0, 64)
    torch.testing.assert_close(log_mel_frames(torch.zeros(800)), torch.full((3, 64), np.log(0.01)))


def test_mel_matrix_bands():
    W = mel_matrix()
    hz = np.linspace(0, 8000, 257)
    assert W.shape == (257, 64) and torch.all(W[0] == 0) and float(W.max()) <= 1.0
    assert torch.all(W[hz < 125] == 0) and torch.all(W[hz > 7500] == 0)
    centres = hz[W.argmax(0).numpy()]
    assert np.all(np.diff(centres) >= 0) and 125 < centres[0] < centres[-1] < 7500
    # a 1 kHz tone peaks in the band centred nearest to 1 kHz
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000)
    band = int(log_mel_frames(tone).mean(0).argmax())
    assert abs(centres[band] - 1000) <= 2 * (centres[band + 1] - centres[band])
    with pytest.raises(ValueError, match="f_min"):
        mel_matrix(f_min=8000)
    with pytest.raises(ValueError, match="16000 Hz"):
        log_mel_frames(torch.zeros(1000), rate=22050)


def test_patches_one_per_quarter_second_subclip():
    x = _signal(3.0).float()
    P = vggish_patches(x)
    assert P.shape == (1 + (len(x) - SUBCLIP_SAMPLES) // TOKEN_HOP_SAMPLES, 96, 64) == (9, 96, 64)
    for k in range(len(P)):  # patch k is the VGGish example of the 1 s sub-clip at k * 0.25 s
        sub = x[k * TOKEN_HOP_SAMPLES : k * TOKEN_HOP_SAMPLES + SUBCLIP_SAMPLES]
        torch.testing.assert_close(P[k], log_mel_patch(sub[None])[0], rtol=0, atol=1e-5)
    # 0.25 s later in the signal is one patch later
    torch.testing.assert_close(vggish_patches(x[TOKEN_HOP_SAMPLES:]), P[1:], rtol=0, atol=1e-5)
    # a click at sample s shows up in patch k's frames i with 160 i <= s - 4000 k < 160 i + 400
    # (not where it hits the window's first sample: the periodic Hann window is 0 there)
    click = torch.zeros(2 * SUBCLIP_SAMPLES)
    s = 13_000
    click[s] = 1.0
    Q = vggish_patches(click)
    for k in range(len(Q)):
        loud = set(torch.nonzero(Q[k].max(1).values > np.log(0.01) + 1e-3).flatten().tolist())
        local = s - TOKEN_HOP_SAMPLES * k
        expect = {i for i in range(96) if 0 < local - 160 * i < 400}
        assert loud == expect, (k, loud, expect)
    assert [
        len(set(torch.nonzero(Q[k].max(1).values > -4).flatten().tolist())) for k in (0, 3, 4)
    ] == [3, 3, 0]
    assert vggish_patches(torch.zeros(30 * 16000)).shape[0] == 117  # 30 s -> 117 full sub-clips
    assert vggish_patches(torch.zeros(SUBCLIP_SAMPLES - 1)).shape == (0, 96, 64)
    with pytest.raises(ValueError, match="multiple"):
        vggish_patches(x, hop_samples=1000)
    with pytest.raises(ValueError, match="15600"):
        log_mel_patch(torch.zeros(1, PATCH_SAMPLES - 1))


def test_network_shapes_and_determinism():
    torch.manual_seed(0)
    a = VGGish(TINY).eval()
    torch.manual_seed(0)
    b = VGGish(TINY).eval()
    x = torch.randn(3, 96, 64)
    ya = a(x)
    assert ya.shape == (3, 128) and bool((ya >= 0).all())  # final ReLU, as the papers' Keras model
    assert torch.equal(ya, b(x)) and torch.equal(ya, a(x))  # same seed, same input: same output
    assert torch.equal(a(x[:, None]), ya)
    torch.testing.assert_close(a(x[1:2]), ya[1:2], rtol=0, atol=1e-6)  # batch-independent
    assert [k for k in a.state_dict() if k.endswith("weight")] == [
        *(f"features.{i}.weight" for i in (0, 3, 6, 8, 11, 13)),
        *(f"embeddings.{i}.weight" for i in (0, 2, 4)),
    ]  # torchvggish's parameter names
    with pytest.raises(ValueError, match="96, 64"):
        a(torch.randn(2, 64, 96))
    with pytest.raises(ValueError, match="six"):
        VGGishConfig(channels=(4, 8))
    fe = VGGishFrontEnd(vggish=a).eval()
    pcm = _signal(1.0, seed=3).float()[None].repeat(2, 1)
    torch.testing.assert_close(fe(pcm), a(log_mel_patch(pcm)), rtol=0, atol=0)
    assert fe.dim == 128


def test_full_size_network_and_cost():
    torch.manual_seed(0)
    net = VGGish().eval()
    assert sum(p.numel() for p in net.parameters()) == 72_141_184
    with torch.no_grad():
        assert net(torch.randn(1, 96, 64)).shape == (1, 128)
    # formula == what torch's flop counter sees (convs + linears)
    assert measured_macs(lambda: net(torch.randn(1, 96, 64))) == vggish_macs() == 863_895_552
    assert vggish_macs(TINY.channels, TINY.fc) == measured_macs(
        lambda: VGGish(TINY)(torch.randn(1, 96, 64))
    )


def test_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(1)
    net = VGGish(TINY).eval()
    path = tmp_path / "vggish.safetensors"
    sha = save_vggish(VGGishFrontEnd(vggish=net), path)
    assert len(sha) == 64
    back = load_vggish(path)  # architecture from the file's metadata
    assert back.config == TINY and not back.training
    x = torch.randn(2, 96, 64)
    assert torch.equal(back(x), net(x))
    assert torch.equal(load_vggish(path, TINY)(x), net(x))
    # a file from another architecture is refused, naming the offending tensors
    plain = tmp_path / "plain.safetensors"
    save_weights(net, plain)  # no config in the metadata: the full VGGish is expected
    with pytest.raises(
        WeightsError, match=r"wrong shapes: embeddings\.0\.bias \(file \(32,\), model \(4096,\)\)"
    ):
        load_vggish(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsError, match="Cannot read"):
        load_vggish(junk)
