import pytest
import torch
from torch import nn

from costream.models import ContinualRetroactiveAttention, ContinualSingleOutputAttention

from ._oracle import run_against_oracle, stream_schedule


def torch_mha(d, h, bias, dtype):
    torch.manual_seed(d + h)
    mha = nn.MultiheadAttention(d, h, bias=bias, batch_first=True).to(dtype).eval()
    if bias:
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("heads", [1, 8])
@pytest.mark.parametrize("n", [1, 2, 7, 64])
@pytest.mark.parametrize(
    "cls", [ContinualSingleOutputAttention, ContinualRetroactiveAttention], ids=["CoSi", "CoRe"]
)
def test_continual_attention_equals_multihead_attention(cls, n, heads, bias, dtype):
    d, B = 16, 4
    mha = torch_mha(d, heads, bias, dtype)
    att = cls.from_torch(mha, window=n)
    retro = cls is ContinualRetroactiveAttention

    @torch.no_grad()
    def oracle(w):
        out = mha(w, w, w, need_weights=False)[0]
        return out if retro else out[:, -1]

    T, _, _ = stream_schedule(B, n)
    X = torch.randn(B, T, d, dtype=dtype, generator=torch.Generator().manual_seed(3))
    worst, scale, checks = run_against_oracle(att.step, att.init_state(B), oracle, X, n)
    assert checks >= 2 * B * n
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert worst <= tol * max(1.0, scale)


def test_retroactive_rows_are_in_temporal_order():
    """A row permutation of the window would pass a sorted comparison; this one must not."""
    d, n = 8, 5
    att = ContinualRetroactiveAttention(d, 2, window=n).double().eval()
    X = torch.randn(1, 3 * n, d, dtype=torch.float64)
    state = att.init_state(1)
    for s in range(3 * n):
        y, state = att.step(X[:, s], state)
    ref = att(X[:, -n:])
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    assert not torch.allclose(y, ref.roll(1, dims=1))


@pytest.mark.parametrize("sigma", [1.0, 4.0, 10.0, 30.0])
def test_retroactive_guard_keeps_float32_finite_and_accurate(sigma):
    """Scores far beyond exp's float32 range (88.7): the unguarded running sums overflow to NaN."""
    d, n, B = 64, 64, 2
    att64 = ContinualRetroactiveAttention(d, 1, window=n, bias=False).double().eval()
    with torch.no_grad():  # identity projections: scores are q.k / sqrt(d) of the raw inputs
        att64.in_proj_weight.copy_(torch.eye(d).repeat(3, 1))
        att64.out_proj.weight.copy_(torch.eye(d))
    att32 = ContinualRetroactiveAttention(d, 1, window=n, bias=False).eval()
    att32.load_state_dict({k: v.float() for k, v in att64.state_dict().items()})
    X = (
        torch.randn(B, 3 * n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        * sigma
        / d**0.25
    )
    max_score = ((X @ X.transpose(1, 2)) / d**0.5).max().item()
    state = att32.init_state(B)
    err_continual = err_regular = 0.0
    for s in range(X.shape[1]):
        y, state = att32.step(X[:, s].float(), state)
        assert torch.isfinite(y).all()
        if s >= n - 1:
            w = X[:, s - n + 1 : s + 1]
            with torch.no_grad():
                ref64, ref32 = att64(w), att32(w.float())
            err_continual = max(err_continual, (y.double() - ref64).abs().max().item())
            err_regular = max(err_regular, (ref32.double() - ref64).abs().max().item())
    if sigma >= 10:
        assert max_score > 88.8  # exp(score) would overflow float32 without the offset
    assert err_continual <= 8 * err_regular + 1e-6, (err_continual, err_regular)


def test_warm_up_outputs_are_finite():
    att = ContinualRetroactiveAttention(8, 2, window=6).eval()
    state = att.init_state(3)
    for _ in range(5):
        y, state = att.step(torch.randn(3, 8), state)
        assert torch.isfinite(y).all()
        assert not state.warm.any()


def test_from_torch_refuses_unsupported_attention():
    with pytest.raises(ValueError, match="add_bias_kv"):
        ContinualSingleOutputAttention.from_torch(
            nn.MultiheadAttention(8, 2, add_bias_kv=True), window=3
        )
    with pytest.raises(TypeError, match="MultiheadAttention"):
        ContinualSingleOutputAttention.from_torch(nn.Linear(8, 8), window=3)
    with pytest.raises(ValueError, match="positive"):
        ContinualSingleOutputAttention(8, 2, window=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("input_major", [True, False])
def test_attend_last_equals_last_row_of_window_attention_in_any_row_order(
    heads, bias, dtype, input_major
):
    from costream.models import MultiheadWeights, input_major_

    d, B, n = 16, 3, 9
    att = MultiheadWeights.from_torch(torch_mha(d, heads, bias, dtype))
    if input_major:
        input_major_(att)
    X = 3 * torch.randn(B, n, d, dtype=dtype, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = att.attend_window(X, last_only=True)  # (B, d): query = newest row
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(6))
        got = att.attend_last(X[:, perm], X[:, -1])  # keys/values shuffled: same result
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_retroactive_step_heads_are_slot_ordered_rows_before_out_projection():
    d, h, n, B = 8, 2, 4, 2
    att = ContinualRetroactiveAttention(d, h, n).double().eval()
    s1, s2 = att.init_state(B), att.init_state(B)
    s2.t[1] = 2  # rows at different positions
    s1.t[1] = 2
    g = torch.Generator().manual_seed(7)
    for _ in range(2 * n + 1):
        x = torch.randn(B, d, dtype=torch.float64, generator=g)
        t = s1.t.clone()
        with torch.no_grad():
            ordered = att.step_tensors(x, s1.tensors, t)  # (B, n, d) temporal order
            heads = att.step_heads(x, s2.tensors, t)  # (B, n, d) slot order
        s1.t += 1
        s2.t += 1
        for b in range(B):
            newest = int(t[b]) % n  # slot of the token just written
            slots = [(newest + 1 + i) % n for i in range(n)]  # oldest -> newest
            torch.testing.assert_close(att.out_proj(heads[b, slots]), ordered[b])
