import copy

import pytest
import torch
from torch import nn

from costream.models import ContinualEncoder
from costream.models.state import StateFormatError

from ._oracle import run_against_oracle, stream_schedule


def make_torch_encoder(
    d, h, layers, norm_first, activation="relu", final_norm=False, bias=True, dtype=torch.float64
):
    torch.manual_seed(1000 * layers + 10 * h + norm_first)
    layer = nn.TransformerEncoderLayer(
        d,
        h,
        2 * d,
        dropout=0.1,
        activation=activation,
        batch_first=True,
        norm_first=norm_first,
        bias=bias,
    )
    norm = nn.LayerNorm(d) if final_norm else None
    enc = nn.TransformerEncoder(layer, layers, norm=norm, enable_nested_tensor=False)
    return enc.to(dtype).eval()


def torch_oracle(te):
    @torch.no_grad()
    def oracle(windows):
        return te(windows)[:, -1]

    return oracle


TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("heads", [1, 8])
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_continual_equals_torch_encoder(n, heads, layers, norm_first, dtype):
    d, B = 16, 4
    te = make_torch_encoder(
        d, heads, layers, norm_first, activation="gelu" if layers == 2 else "relu", dtype=dtype
    )
    enc = ContinualEncoder.from_torch(te, window=n)
    T, _, _ = stream_schedule(B, n)
    X = torch.randn(B, T, d, dtype=dtype, generator=torch.Generator().manual_seed(n))
    worst, scale, checks = run_against_oracle(enc.step, enc.init_state(B), torch_oracle(te), X, n)
    assert checks >= B * 2 * n  # every row checked over >= 2n of its >= 3n steps
    assert worst <= TOL[dtype] * max(1.0, scale), worst


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_final_norm_no_bias_and_regular_forward(layers):
    d, n, B = 24, 5, 3
    te = make_torch_encoder(d, 4, layers, norm_first=True, final_norm=True, bias=False)
    enc = ContinualEncoder.from_torch(te, window=n)
    X = torch.randn(B, n, d, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(enc(X), te(X)[:, -1], rtol=0, atol=1e-12)
    T, _, _ = stream_schedule(B, n)
    X = torch.randn(B, T, d, dtype=torch.float64)
    worst, _, _ = run_against_oracle(enc.step, enc.init_state(B), torch_oracle(te), X, n)
    assert worst < 1e-10


def test_state_dict_keys_match_torch():
    te = make_torch_encoder(16, 2, 3, norm_first=False, final_norm=True)
    enc = ContinualEncoder.from_torch(te, window=4)
    assert enc.state_dict().keys() == te.state_dict().keys()
    for k, v in te.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v)


@pytest.mark.parametrize("layers", [1, 2])
def test_batched_rows_equal_single_streams_and_bytes_roundtrip(layers):
    d, n, B = 16, 6, 3
    te = make_torch_encoder(d, 2, layers, norm_first=False, dtype=torch.float32)
    enc = ContinualEncoder.from_torch(te, window=n)
    X = torch.randn(B, 3 * n, d)
    state = enc.init_state(B)
    singles = [enc.init_state(1) for _ in range(B)]
    for s in range(3 * n):
        y, state = enc.step(X[:, s], state)
        for b in range(B):
            # each single stream goes through bytes every step, as a stateful DoFn would
            blob = singles[b].to_bytes()
            yb, singles[b] = enc.step(X[b : b + 1, s], type(singles[b]).from_bytes(blob))
            torch.testing.assert_close(yb[0], y[b], rtol=0, atol=2e-6)
    merged = type(state).cat(singles)
    for k in state.tensors:
        torch.testing.assert_close(merged[k], state[k], rtol=0, atol=2e-6)
    assert torch.equal(merged.t, state.t)


def test_reset_row_equals_fresh_state():
    d, n, B = 16, 4, 2
    te = make_torch_encoder(d, 2, 2, norm_first=True)
    enc = ContinualEncoder.from_torch(te, window=n)
    X = torch.randn(B, 4 * n, d, dtype=torch.float64)
    state = enc.init_state(B)
    for s in range(2 * n):
        _, state = enc.step(X[:, s], state)
    state.reset([1])
    fresh = enc.init_state(1)
    for s in range(2 * n, 4 * n):
        y, state = enc.step(X[:, s], state)
        yf, fresh = enc.step(X[1:2, s], fresh)
        assert torch.equal(state.warm[1:], fresh.warm)
        torch.testing.assert_close(y[1], yf[0], rtol=0, atol=1e-12)


def test_clone_peeks_without_committing():
    te = make_torch_encoder(16, 2, 2, norm_first=False)
    enc = ContinualEncoder.from_torch(te, window=3)
    state = enc.init_state(2)
    X = torch.randn(2, 8, 16, dtype=torch.float64)
    for s in range(5):
        _, state = enc.step(X[:, s], state)
    peek, _ = enc.step(X[:, 5], state.clone())
    y, state = enc.step(X[:, 5], state)
    assert torch.equal(peek, y)


@pytest.mark.parametrize("scale", [10.0, 30.0])
@pytest.mark.parametrize("layers,norm_first", [(1, False), (2, False), (2, True), (3, False)])
def test_large_activations_stay_finite_and_accurate(scale, layers, norm_first):
    d, n, B = 32, 16, 3
    te64 = make_torch_encoder(d, 4, layers, norm_first)
    te32 = copy.deepcopy(te64).float()
    enc = ContinualEncoder.from_torch(te32, window=n)
    X = (
        torch.randn(B, 4 * n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        * scale
    )
    state = enc.init_state(B)
    err_continual = err_regular = 0.0
    for s in range(X.shape[1]):
        y, state = enc.step(X[:, s].float(), state)
        assert torch.isfinite(y).all()
        if s >= n - 1:
            w = X[:, s - n + 1 : s + 1]
            with torch.no_grad():
                ref64, ref32 = te64(w)[:, -1], te32(w.float())[:, -1]
            err_continual = max(err_continual, (y.double() - ref64).abs().max().item())
            err_regular = max(err_regular, (ref32.double() - ref64).abs().max().item())
    # as close to float64 as regular float32 attention is (within a small factor)
    assert err_continual <= 4 * err_regular + 1e-6, (err_continual, err_regular)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        from costream.models import ContinualSingleOutputAttention

        ContinualSingleOutputAttention(10, 3, window=4)
    te = make_torch_encoder(16, 2, 1, norm_first=False)
    enc = ContinualEncoder.from_torch(te, window=4)
    state = enc.init_state(2)
    with pytest.raises(ValueError, match=r"shape \(B, d\) = \(2, 16\), got \(2, 15\)"):
        enc.step(torch.randn(2, 15, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="batch_first=True"):
        layer = nn.TransformerEncoderLayer(16, 2, 32)
        ContinualEncoder.from_torch(
            nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), window=4
        )
    with pytest.raises(ValueError, match="positive"):
        ContinualEncoder.from_torch(te, window=0)
    with pytest.raises(ValueError, match="Unknown attention kind"):
        ContinualEncoder.from_torch(te, window=4, attention="linear")
    other = ContinualEncoder.from_torch(make_torch_encoder(16, 2, 2, norm_first=False), window=4)
    with pytest.raises(StateFormatError, match="cannot be stepped"):
        other.step(torch.randn(2, 16, dtype=torch.float64), state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers", [1, 2])
def test_single_stream_fast_path_equals_torch_encoder(layers, dtype):
    """B=1 takes slice copies instead of index tensors; a reset row restarts its warm-up."""
    d, n = 16, 7
    te = make_torch_encoder(d, 4, layers, norm_first=False, dtype=dtype)
    enc = ContinualEncoder.from_torch(te, window=n)
    T = 4 * n + 2  # reset at step n + 1, then 3n more steps
    X = torch.randn(1, T, d, dtype=dtype, generator=torch.Generator().manual_seed(7))
    worst, scale, checks = run_against_oracle(enc.step, enc.init_state(1), torch_oracle(te), X, n)
    assert checks >= 2 * n
    assert worst <= TOL[dtype] * max(1.0, scale), worst


def test_weights_are_stored_input_major_with_unchanged_values():
    te = make_torch_encoder(16, 2, 2, norm_first=True)
    enc = ContinualEncoder.from_torch(te, window=4)
    w = enc.layers[0].self_attn.in_proj_weight
    assert w.shape == (48, 16) and w.t().is_contiguous()  # (out, in) view of (in, out) memory
    assert enc.layers[1].linear1.weight.t().is_contiguous()
    for k, v in te.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v)
    assert enc.to(torch.float32).layers[0].linear2.weight.t().is_contiguous()  # .to() keeps it
