"""models/linear.py: packed-weight products equal F.linear; the encoder stays exact with them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from costream.models import ContinualEncoder
from costream.models import linear as lin

from ._oracle import run_against_oracle, stream_schedule

needs_packing = pytest.mark.skipif(
    not lin.packed_weights(), reason="oneDNN packed weights unavailable or turned off"
)

D = 512  # 512 x 512 = PACK_MIN_ELEMENTS: the smallest packed weight


def _weights(out=D, inp=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * inp**-0.5, torch.randn(out, generator=g)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts oneDNN product calls (so a test can tell which kernel ran)."""
    calls = []
    real = lin._ops._linear_pointwise if lin._AVAILABLE else None

    class Spy:
        def __call__(self, *args):
            calls.append("unary")
            return real(*args)

        def binary(self, *args):
            calls.append("binary")
            return real.binary(*args)

    if real is not None:
        monkeypatch.setattr(
            lin,
            "_ops",
            type(
                "Ops",
                (),
                {
                    "_linear_pointwise": Spy(),
                    "_reorder_linear_weight": lin._ops._reorder_linear_weight,
                },
            )(),
        )
    return calls


@needs_packing
@pytest.mark.parametrize("rows", [2, 8, 64, 300])
@pytest.mark.parametrize("form", ["plain", "relu", "gelu", "tanh-gelu", "residual"])
@torch.no_grad()
def test_packed_products_equal_f_linear(rows, form, packed_calls):
    W, b = _weights()
    x = torch.randn(rows, D)
    r = torch.randn(rows, D)
    act = {
        "relu": F.relu,
        "gelu": F.gelu,
        "tanh-gelu": lambda y: F.gelu(y, approximate="tanh"),
    }.get(form)
    if form == "residual":
        got, want = lin.linear(x, W, b, residual=r), r + F.linear(x, W, b)
    else:
        got = lin.linear(x, W, b, activation=act)
        want = F.linear(x, W, b) if act is None else act(F.linear(x, W, b))
    assert packed_calls, "the packed kernel did not run"
    assert got.shape == want.shape
    assert _rel(got, want) < 1e-5


@needs_packing
@torch.no_grad()
def test_three_dimensional_rows_and_views_of_a_parameter(packed_calls):
    W3 = nn.Parameter(torch.randn(3 * D, D) * D**-0.5)
    x = torch.randn(2, 5, D)
    for i in range(3):
        view = W3[i * D : (i + 1) * D]
        assert _rel(lin.linear(x, view), F.linear(x, view)) < 1e-5
    assert len(packed_calls) == 3
    assert len(lin._PACKS[id(W3)][1]) == 3  # one packed copy per view, cached on the parameter


@needs_packing
@torch.no_grad()
def test_a_changed_weight_is_packed_again():
    layer = nn.Linear(D, D)
    x = torch.randn(4, D)
    first = lin.linear(x, layer.weight, layer.bias)
    layer.load_state_dict({"weight": 2 * layer.weight, "bias": layer.bias})  # in place: version
    assert (
        _rel(lin.linear(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias)) < 1e-5
    )
    layer.weight.data = torch.randn(D, D)  # new storage
    assert (
        _rel(lin.linear(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias)) < 1e-5
    )
    assert not torch.allclose(first, lin.linear(x, layer.weight, layer.bias))


def test_cache_entries_go_with_their_weights():
    with torch.no_grad():
        W = nn.Parameter(torch.randn(D, D))
        lin.linear(torch.randn(4, D), W)
    ident = id(W)
    assert (ident in lin._PACKS) == lin.packed_weights()
    del W
    assert ident not in lin._PACKS


@pytest.mark.parametrize(
    "case",
    ["one row", "small weight", "float64", "gradients on", "turned off"],
)
def test_other_products_take_f_linear(case, packed_calls):
    rows, out, inp, dtype = 8, D, D, torch.float32
    if case == "one row":
        rows = 1
    elif case == "small weight":
        out = inp = 64
    elif case == "float64":
        dtype = torch.float64
    W, b = (t.to(dtype) for t in _weights(out, inp))
    x = torch.randn(rows, inp, dtype=dtype, requires_grad=case == "gradients on")
    previous = lin.set_packed_weights(case != "turned off" and lin.packed_weights())
    try:
        with torch.set_grad_enabled(case == "gradients on"):
            got = lin.linear(x, W, b, activation=F.gelu)
    finally:
        lin.set_packed_weights(previous)
    assert packed_calls == []
    torch.testing.assert_close(got, F.gelu(F.linear(x, W, b)), rtol=0, atol=0)
    if case == "gradients on":
        got.sum().backward()
        assert x.grad is not None


def test_activation_and_residual_together_are_refused():
    W, b = _weights(64, 64)
    with pytest.raises(ValueError, match="not both"):
        lin.linear(torch.randn(2, 64), W, b, activation=F.relu, residual=torch.randn(2, 64))


@pytest.mark.parametrize("shape", [(16, 4), (3, 8, 16, 4), (300, 8, 64, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rowdot_equals_batched_matrix_vector_product(shape, dtype):
    Q = torch.randn(*shape, dtype=dtype)
    k = torch.randn(*shape[:-2], shape[-1], dtype=dtype)
    want = (Q @ k.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lin.rowdot(Q, k), want)
    assert lin.rowdot(Q, k).shape == want.shape


@needs_packing
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_encoder_with_packed_weights_equals_torch_encoder(layers, norm_first, packed_calls):
    """Weights large enough to be packed, 3 streams at different positions, >= 3n steps, float32."""
    n, h, B = 6, 4, 3
    torch.manual_seed(layers)
    layer = nn.TransformerEncoderLayer(
        D, h, D, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    )
    te = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    enc = ContinualEncoder.from_torch(te, window=n)
    T, _, _ = stream_schedule(B, n)
    X = torch.randn(B, T, D, generator=torch.Generator().manual_seed(7))

    @torch.no_grad()
    def oracle(windows):
        return te(windows)[:, -1]

    worst, scale, checks = run_against_oracle(enc.step, enc.init_state(B), oracle, X, n)
    assert packed_calls, "the packed kernels did not run"
    assert checks >= B * 2 * n
    assert worst <= 1e-5 * max(1.0, scale), worst
