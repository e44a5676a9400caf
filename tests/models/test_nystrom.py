"""Continual Nyström attention == Nyström attention on the current window (docs §7.6, §9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from costream.models.continual_nystrom import (
    ContinualNystromRetroactiveAttention,
    ContinualNystromSingleOutputAttention,
)
from costream.models.encoder import ContinualEncoder
from costream.models.flops import continual_nystrom_macs, nystrom_macs
from costream.models.nystrom import (
    NystromOptions,
    nystrom,
    parse_attention,
    pseudo_inverse,
    segment_means,
)
from costream.models.nystrom_attention import NystromAttention, NystromMultiheadAttention
from costream.models.state import StreamState

D, H, N = 16, 2, 8
CLASSES = {
    "single": ContinualNystromSingleOutputAttention,
    "retro": ContinualNystromRetroactiveAttention,
}
TOL = {torch.float64: dict(atol=1e-9, rtol=0), torch.float32: dict(atol=1e-4, rtol=1e-4)}


def oracle(att, X: torch.Tensor, t: int, fixed: bool = False) -> torch.Tensor:
    """Nyström on the window ending at 1-based step t, landmarks from the window at the last
    update t - (t mod s) (§7.6), built independently of the continual step."""
    n, m = att.window, att.landmarks
    q, k, v = att._heads(X[:, max(0, t - 2 * n) : t])  # (B, h, <=2n, d_h), newest last
    q, k, v = q[:, :, -2 * n :], k[:, :, -2 * n :], v[:, :, -2 * n :]
    L = q.shape[2]
    if fixed:
        q_l, k_l = att.landmark_q.to(X.dtype), att.landmark_k.to(X.dtype)
    else:
        j = t % (n // m)
        q_l = segment_means(q[:, :, L - j - n : L - j], m)  # (B, h, m, d_h)
        k_l = segment_means(k[:, :, L - j - n : L - j], m)
    o = nystrom(q[:, :, -n:], k[:, :, -n:], v[:, :, -n:], q_l, k_l, att.pinv, att.pinv_iters)
    return att.merge(o.transpose(1, 2))  # (B, n, d)


def run_streams(att, X: torch.Tensor, starts: list[int], fixed: bool = False, dtype=None) -> float:
    """Step B streams in one batch; stream b starts (is reset) at global step starts[b] and feeds
    X[b, τ - starts[b]]. Every warm output must equal its own oracle; returns the max error."""
    B, T, _ = X.shape
    state = att.init_state(B, dtype=dtype or X.dtype)
    worst, checked = 0.0, 0
    for tau in range(T + max(starts)):
        state.reset(torch.tensor([tau == s for s in starts]))
        pos = [min(max(tau - s, 0), T - 1) for s in starts]
        x = torch.stack([X[b, p] for b, p in enumerate(pos)])  # (B, d); rows not started: junk
        y, state = att.step(x, state)
        assert torch.isfinite(y).all()
        for b, s in enumerate(starts):
            t = tau - s + 1  # tokens seen by row b
            if tau < s or tau - s >= T:
                continue
            assert bool(state.warm[b]) == (t >= att.window)
            if t < att.window:
                continue
            ref = oracle(att, X[b : b + 1], t, fixed)[0]
            ref = ref[-1] if y.dim() == 2 else ref
            torch.testing.assert_close(y[b], ref, **TOL[X.dtype])
            worst, checked = max(worst, (y[b] - ref).abs().max().item()), checked + 1
    assert checked >= 2 * att.window
    return worst


@pytest.mark.parametrize("form", ["single", "retro"])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("pinv", ["iterative", "exact"])
def test_continual_landmarks_equal_oracle_float64(form, m, pinv):
    torch.manual_seed(m)
    att = CLASSES[form](D, H, N, landmarks=m, pinv=pinv).double().eval()
    X = torch.randn(3, 3 * N + 2, D, dtype=torch.float64)
    run_streams(att, X, starts=[0, 3, 5])  # three streams at different positions


@pytest.mark.parametrize("form", ["single", "retro"])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_continual_landmarks_equal_oracle_float32(form, m):
    torch.manual_seed(10 + m)
    att = CLASSES[form](D, H, N, landmarks=m).eval()
    X = torch.randn(2, 3 * N, D)
    run_streams(att, X, starts=[0, 2])


@pytest.mark.parametrize("form", ["single", "retro"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fixed_landmarks_equal_oracle_every_step(form, dtype):
    torch.manual_seed(3)
    att = CLASSES[form](D, H, N, landmarks=3, landmark_mode="fixed").to(dtype).eval()  # 8 % 3 ok
    X = torch.randn(2, 4 * N, D, dtype=dtype)
    run_streams(att, X, starts=[0, 1], fixed=True)


def test_fixed_landmarks_long_stream_does_not_drift():
    torch.manual_seed(4)
    att = ContinualNystromSingleOutputAttention(D, H, N, landmarks=2, landmark_mode="fixed").eval()
    X = 2 * torch.randn(1, 50 * N, D)
    state = att.init_state(1)
    errs = []
    for t in range(1, X.shape[1] + 1):
        y, state = att.step(X[:, t - 1], state)
        if t >= N:
            errs.append((y - oracle(att, X, t, fixed=True)[:, -1]).abs().max().item())
    assert max(errs[-N:]) < 1e-5 and max(errs) < 1e-4


@pytest.mark.parametrize("form", ["single", "retro"])
def test_m_equals_n_with_exact_pinv_is_softmax_attention(form):
    torch.manual_seed(5)
    att = CLASSES[form](D, H, N, landmarks=N, pinv="exact").double().eval()
    mha = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    att.load_state_dict(mha.state_dict())
    X = torch.randn(2, 3 * N, D, dtype=torch.float64)
    state = att.init_state(2)
    for t in range(1, X.shape[1] + 1):
        y, state = att.step(X[:, t - 1], state)
        if t >= N:
            ref = mha(*(X[:, t - N : t],) * 3, need_weights=False)[0]  # (B, n, d)
            torch.testing.assert_close(
                y, ref[:, -1] if form == "single" else ref, atol=1e-9, rtol=0
            )


def test_regular_sanity_identities():
    torch.manual_seed(6)
    X = torch.randn(2, N, D, dtype=torch.float64)
    one = NystromAttention(D, H, N, landmarks=1).double()
    y = one(X)
    torch.testing.assert_close(y, y[:, :1].expand_as(y), atol=1e-12, rtol=0)  # m = 1: same rows
    full = NystromAttention(D, H, N, landmarks=N, pinv="exact").double()
    mha = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    full.load_state_dict(mha.state_dict())
    torch.testing.assert_close(full(X), mha(X, X, X, need_weights=False)[0], atol=1e-12, rtol=0)
    # uneven segments are allowed in the regular form (first n % m segments one longer)
    torch.testing.assert_close(
        segment_means(torch.arange(5.0).view(5, 1), 2), torch.tensor([[1.0], [3.5]])
    )


def test_pinv_scaling_is_per_matrix_so_streams_are_independent():
    torch.manual_seed(7)
    A = torch.softmax(
        torch.randn(3, 2, 4, 4, dtype=torch.float64)
        * torch.tensor([1.0, 5.0, 20.0]).view(3, 1, 1, 1),
        -1,
    )
    batched = pseudo_inverse(A)
    alone = torch.stack([pseudo_inverse(A[b]) for b in range(3)])
    torch.testing.assert_close(batched, alone, atol=1e-12, rtol=0)
    att = NystromAttention(D, H, landmarks=4).double()
    X = torch.randn(3, N, D, dtype=torch.float64) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1)
    torch.testing.assert_close(
        att(X), torch.cat([att(X[b : b + 1]) for b in range(3)]), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("form", ["single", "retro"])
@pytest.mark.parametrize("mode", ["continual", "fixed"])
def test_float32_finite_on_large_activations(form, mode):
    torch.manual_seed(8)
    att = CLASSES[form](D, H, N, landmarks=4, landmark_mode=mode).eval()
    with torch.no_grad():
        att.in_proj_weight.mul_(8.0)  # scores of several hundred: raw exp would overflow
    ref_att = CLASSES[form](D, H, N, landmarks=4, landmark_mode=mode).double().eval()
    ref_att.load_state_dict(att.state_dict())
    X = 4 * torch.randn(2, 5 * N, D)
    s32, s64 = att.init_state(2), ref_att.init_state(2)
    q, k, _ = att._heads(X)
    assert (q @ k.transpose(-1, -2)).abs().max() > 100
    for t in range(X.shape[1]):
        y, s32 = att.step(X[:, t], s32)
        y64, s64 = ref_att.step(X[:, t].double(), s64)
        assert torch.isfinite(y).all()
        assert torch.isfinite(s32.tensors["z"]).all() and torch.isfinite(s32.tensors["e"]).all()
    scale = y64.abs().max().item()
    assert (y.double() - y64).abs().max().item() < 1e-2 * max(scale, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(window=8, landmarks=3), r"n=8 is not divisible by landmarks m=3.*\[1, 2, 4, 8\]"),
        (dict(window=8, landmarks=9), r"exceeds the window n=8; use 1 <= m <= n"),
        (dict(window=8, landmarks=0), r"positive integer m"),
        (dict(window=8, landmarks=2, landmark_mode="kmeans"), r"landmark_mode must be one of"),
        (dict(window=8, landmarks=2, pinv="svd"), r"pinv must be one of"),
        (dict(window=8, landmarks=2, pinv_iters=0), r"pinv_iters must be >= 1"),
    ],
)
def test_bad_configurations_error_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContinualNystromSingleOutputAttention(D, H, **kwargs)


def test_bad_heads_and_fixed_landmark_shapes():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ContinualNystromRetroactiveAttention(18, 4, 8, landmarks=2)
    with pytest.raises(ValueError, match=r"shape \(h, m, d_h\)"):
        NystromAttention(
            D, H, landmarks=2, landmark_mode="fixed", fixed_landmarks=(torch.zeros(2, 2, 3),) * 2
        )
    with pytest.raises(ValueError, match="exceeds the window length"):
        NystromAttention(D, H, landmarks=4)(torch.randn(1, 3, D))
    # n % m != 0 is fine for fixed landmarks
    ContinualNystromSingleOutputAttention(D, H, 8, landmarks=3, landmark_mode="fixed")


def test_state_roundtrip_reset_and_kind():
    torch.manual_seed(9)
    att = ContinualNystromRetroactiveAttention(D, H, N, landmarks=4).eval()
    X = torch.randn(2, 3 * N, D)
    s = att.init_state(2)
    for t in range(N + 3):
        _, s = att.step(X[:, t], s)
    s2 = StreamState.from_bytes(s.to_bytes())
    assert (
        "m=4" in s2.kind
        and s2.kind != ContinualNystromRetroactiveAttention(D, H, N, landmarks=2).init_state(1).kind
    )
    y1, _ = att.step(X[:, N + 3], s)
    y2, _ = att.step(X[:, N + 3], s2)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    # a reset row behaves like a fresh state (no leakage)
    s.reset([1])
    fresh = att.init_state(1)
    for t in range(N + 2):
        y, s = att.step(X[:, t], s)
        yf, fresh = att.step(X[1:, t], fresh)
    torch.testing.assert_close(y[1], yf[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("mode", ["continual", "fixed"])
def test_encoder_from_torch_nystrom(layers, mode):
    torch.manual_seed(11)
    layer = nn.TransformerEncoderLayer(D, H, 32, dropout=0.0, batch_first=True, dtype=torch.float64)
    torch_enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    enc = ContinualEncoder.from_torch(
        torch_enc, window=N, attention="nystrom", landmarks=4, landmark_mode=mode
    )
    assert isinstance(
        enc.layers[0].self_attn,
        ContinualNystromSingleOutputAttention
        if layers == 1
        else ContinualNystromRetroactiveAttention,
    )
    assert all(isinstance(lay.self_attn, NystromAttention) for lay in enc.layers[1:])
    X = torch.randn(2, 3 * N, D, dtype=torch.float64)
    state = enc.init_state(2)
    s = N // 4
    for t in range(1, X.shape[1] + 1):
        y, state = enc.step(X[:, t - 1], state)
        if t >= N and (mode == "fixed" or t % s == 0):  # continual landmarks: at update steps
            torch.testing.assert_close(y, enc(X[:, t - N : t]), atol=1e-9, rtol=0)


def test_nystrom_layer_trains_and_learns_fixed_landmarks():
    torch.manual_seed(12)
    att = NystromAttention(D, H, N, landmarks=2, landmark_mode="fixed")
    att(torch.randn(4, N, D)).square().mean().backward()
    assert att.landmark_q.grad is not None and att.landmark_q.grad.abs().sum() > 0
    assert att.in_proj_weight.grad.abs().sum() > 0


def test_mac_formulas_match_doc_table():
    # §7.7 table, n=64, d=1024, h=8 (attention only, MACs)
    n, d, h = 64, 1024, 8
    assert nystrom_macs(n, d, h, 8) == pytest.approx(2.29e6, rel=5e-3)
    assert nystrom_macs(n, d, h, 16) == pytest.approx(5.37e6, rel=5e-3)
    assert continual_nystrom_macs(n, d, h, 8, landmark_mode="fixed") == pytest.approx(
        0.058e6, rel=1e-2
    )
    assert continual_nystrom_macs(n, d, h, 8) == pytest.approx(0.097e6, rel=1e-2)
    assert continual_nystrom_macs(n, d, h, 16) == pytest.approx(0.420e6, rel=1e-2)
    assert continual_nystrom_macs(n, d, h, 32) == pytest.approx(4.01e6, rel=1e-2)
    assert continual_nystrom_macs(
        n, d, h, 8, retroactive=True, landmark_mode="fixed"
    ) == pytest.approx(0.582e6, rel=1e-2)
    assert continual_nystrom_macs(n, d, h, 8, retroactive=True) == pytest.approx(0.691e6, rel=1e-2)
    assert continual_nystrom_macs(n, d, h, 16, retroactive=True) == pytest.approx(1.763e6, rel=1e-2)


def test_drop_in_multihead_attention_trains_in_torch_encoder_and_converts():
    torch.manual_seed(13)
    layer = nn.TransformerEncoderLayer(D, H, 32, dropout=0.0, batch_first=True, dtype=torch.float64)
    layer.self_attn = NystromMultiheadAttention(D, H, bias=True, window=N, landmarks=2).double()
    torch_enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    enc = ContinualEncoder.from_torch(torch_enc, window=N, attention="nystrom", landmarks=2)
    X = torch.randn(3, N, D, dtype=torch.float64)
    with torch.no_grad():  # eval + no_grad + biases: torch's fused softmax fast path must not run
        torch.testing.assert_close(torch_enc(X)[:, -1], enc(X), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="no masks"):
        layer.self_attn(X, X, X, attn_mask=torch.zeros(N, N, dtype=torch.bool))


def test_parse_attention_specs():
    assert parse_attention("softmax") == ("softmax", {})
    assert parse_attention("nystrom:m=4,pinv=exact,iters=3", window=8) == (
        "nystrom",
        {"landmarks": 4, "pinv": "exact", "pinv_iters": 3},
    )
    assert parse_attention("nystrom:m=3,landmarks=fixed", window=8)[1]["landmark_mode"] == "fixed"
    for spec, match in [
        ("nystrom", "needs the number of landmarks"),
        ("nystrom:m=3", "not divisible"),
        ("nystrom:k=3", "Bad Nyström option"),
        ("linear", "Unknown attention"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_attention(spec, window=8)


@pytest.mark.parametrize("name", ["co_nystrom_oadtr_b1", "co_nystrom_audio_b2"])
def test_zoo_nystrom_models_stream_equal_their_regular_twin(name):
    from costream.models.zoo import get_model, model_info

    torch.manual_seed(14)
    small = dict(d_model=16, window=8, heads=2, ffn=32, classes=3, pe_size=15)
    if model_info(name).family == "oadtr":
        small |= dict(d_in=12, attention="nystrom:m=4")
    else:
        small |= dict(n_mels=4, patch=2, channels=4, attention="nystrom:m=2")
    co = get_model(name, **small).double()
    regular = get_model(name[3:], **small).double().eval()
    regular.load_state_dict(co.state_dict())  # same keys in both forms
    s = 8 // co.encoder.layers[0].self_attn.landmarks
    X = torch.randn(2, 3 * 8, co.config.d_in, dtype=torch.float64)
    state = co.init_state(2)
    for t in range(1, X.shape[1] + 1):
        out, state = co.step(X[:, t - 1], state)
        if t >= 8 and t % s == 0:
            with torch.no_grad():
                ref = regular(X[:, t - 8 : t], torch.full((2,), t - 8))
            torch.testing.assert_close(out.scores, ref, atol=1e-9, rtol=0)


def test_zoo_macs_per_frame_counts_nystrom_attention():
    from costream.models.zoo import macs_per_frame, make_config

    n, d, h = 64, 1024, 8
    co, co_ny = make_config("co_oadtr_b1"), make_config("co_nystrom_oadtr_b1")  # m=4, fixed
    base = macs_per_frame(co, continual=True, convention="clean")
    got = macs_per_frame(co_ny, continual=True, convention="clean")
    assert got == base - 2 * n * d + continual_nystrom_macs(n, d, h, 4, landmark_mode="fixed")
    reg = macs_per_frame(make_config("oadtr_b1"), continual=False, convention="clean")
    reg_ny = macs_per_frame(make_config("nystrom_oadtr_b1"), continual=False, convention="clean")
    assert reg_ny == reg - 2 * n * n * d + nystrom_macs(n, d, h, 4)


def test_nystrom_options_one_definition_of_the_choices():
    opts = NystromOptions(landmarks=4, landmark_mode="fixed", pinv="exact", pinv_iters=3)
    assert opts.describe() == "m=4,landmarks=fixed,pinv=exact3"
    opts.validate(window=6)  # fixed landmarks need no equal segments
    with pytest.raises(ValueError, match="not divisible by landmarks m=4"):
        NystromOptions(landmarks=4).validate(window=6)
    NystromOptions(landmarks=4).validate(window=6, streaming=False)  # regular form: uneven ok
    with pytest.raises(ValueError, match="positive integer m"):
        NystromOptions(landmarks=True)
    # the layers keep the options they were built with; parse_attention's dict builds the same
    att = NystromAttention(D, H, N, landmarks=4, landmark_mode="fixed", pinv="exact", pinv_iters=3)
    assert att.options == opts
    _, parsed = parse_attention("nystrom:m=4,landmarks=fixed,pinv=exact,iters=3", window=N)
    assert NystromOptions(**parsed) == opts
