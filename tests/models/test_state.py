import struct

import pytest
import torch

from costream.models import ContinualEncoder, StateFormatError, StreamState


def sample_state():
    tensors = {
        "a": torch.randn(3, 2, 4),
        "b": torch.randn(3, 5, dtype=torch.float64),
        "h": torch.randn(3, 2).to(torch.bfloat16),
        "m": torch.tensor([[True], [False], [True]]),
    }
    return StreamState(tensors, torch.tensor([0, 4, 9]), window=4, kind="demo")


def test_bytes_roundtrip_is_exact_and_keeps_dtypes():
    s = sample_state()
    r = StreamState.from_bytes(s.to_bytes())
    assert r.kind == "demo" and r.window == 4 and torch.equal(r.t, s.t)
    for k, v in s.tensors.items():
        assert r[k].dtype == v.dtype and torch.equal(r[k], v)
    assert r.warm.tolist() == [False, True, True]


def test_blob_is_compact():
    te = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(64, 4, 64, batch_first=True), 1, enable_nested_tensor=False
    )
    enc = ContinualEncoder.from_torch(te, window=16)
    state = enc.init_state(1)
    blob = state.to_bytes()
    assert len(blob) - state.nbytes < 400  # header overhead only


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[:-1], "CRC32"),
        (lambda b: b[:8], "truncated"),
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "CRC32"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + struct.pack("<H", 99) + b[6:], "version 99"),
    ],
)
def test_damaged_blobs_raise_clear_errors(damage, match):
    with pytest.raises(StateFormatError, match=match):
        StreamState.from_bytes(damage(sample_state().to_bytes()))


def test_split_select_cat_reset():
    s = sample_state()
    parts = s.split()
    assert [p.batch_size for p in parts] == [1, 1, 1]
    merged = StreamState.cat([parts[2], parts[0]])
    assert merged.t.tolist() == [9, 0]
    assert torch.equal(merged["a"][0], s["a"][2])
    s.reset(torch.tensor([False, True, False]))
    assert s.t.tolist() == [0, 0, 9] and not s["a"][1].any() and s["a"][2].any()
    with pytest.raises(StateFormatError, match="different models"):
        StreamState.cat(
            [parts[0], StreamState({"a": torch.zeros(1, 2, 4)}, torch.zeros(1), 5, "other")]
        )


def test_shape_errors_name_the_tensor():
    with pytest.raises(StateFormatError, match="'x' has shape \\(2, 3\\)"):
        StreamState({"x": torch.zeros(2, 3)}, torch.zeros(3), 4, "k")
