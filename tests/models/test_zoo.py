"""Zoo models: continual twin == regular model, registry, save/load round trip, refused files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from costream.models.weights import WeightsError
from costream.models.zoo import (
    ContinualOnlineTransformer,
    OnlineTransformer,
    StepOutput,
    continual_from_regular,
    get_model,
    list_models,
    load_model,
    make_config,
    model_info,
    read_card,
    save_model,
)

SMALL = {
    "oadtr": dict(d_in=12, d_model=16, window=5, heads=2, ffn=24, classes=4, pe_size=9),
    "audio": dict(n_mels=6, patch=3, channels=8, d_model=16, window=5, heads=2, ffn=24, pe_size=9),
    # window >= the 12 landmarks of the GTZAN Nyström entries; 4 heads of d_h = 4
    "gtzan": dict(d_in=12, d_model=16, window=16, heads=4, ffn=16, pe_size=31),
}
ZOO = [name for name in list_models() if not name.startswith("co_")]


def _small(name: str, **kw):
    return get_model(name, **(SMALL[model_info(name).family] | kw))


def _stream_vs_regular(regular: OnlineTransformer, B: int = 3, dtype=torch.float32):
    """Stream B rows at different positions (staggered starts, one mid-stream reset) for >= 3n
    steps; compare each warm row with the regular model on its last n frames and PE phase."""
    co = continual_from_regular(regular)
    n, D = regular.window, regular.config.d_in
    starts = [0, 2, n + 1][:B]
    reset_at = {starts[-1] + n + 2: 0}  # step -> row reset before that step
    T = max(starts) + 3 * n + 4
    X = torch.randn(B, T, D, dtype=dtype)
    state = co.init_state(B)
    since = [0] * B
    worst, checks = 0.0, 0
    for s in range(T):
        for b in range(B):
            if s == starts[b] or reset_at.get(s) == b:
                state.reset([b])
                since[b] = s
        out, state = co.step(X[:, s], state)
        assert isinstance(out, StepOutput) and out.scores.shape == (B, regular.config.classes)
        assert out.scores.dtype == dtype
        seen = [s - since[b] + 1 for b in range(B)]
        assert out.warm.tolist() == [k >= n for k in seen]
        assert state.t.tolist() == seen
        rows = [b for b in range(B) if seen[b] >= n]
        if rows:
            win = torch.stack([X[b, s - n + 1 : s + 1] for b in rows])  # (R, n, D)
            phase = torch.tensor([seen[b] - n for b in rows])  # arrival index of the first frame
            ref = regular(win, phase)
            worst = max(worst, (out.scores[rows] - ref).abs().max().item())
            checks += len(rows)
    assert checks >= 3 * n
    return worst


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("name", ZOO)
def test_continual_equals_regular(name, dtype, tol):
    torch.manual_seed(0)
    regular = _small(name).to(dtype).eval()
    assert _stream_vs_regular(regular, dtype=dtype) < tol


@pytest.mark.parametrize(
    "name",
    ["co_oadtr_b1", "co_oadtr_b2", "co_audio_b2", "co_gtzan_b1", "co_gtzan_b2",
     "co_nystrom_gtzan_b1", "co_nystrom_gtzan_b2"],
)  # fmt: skip
def test_registered_continual_models_match_their_own_oracle(name):
    torch.manual_seed(1)
    co = _small(name)
    assert isinstance(co, ContinualOnlineTransformer) and not co.training
    n, D = co.window, co.config.d_in
    X = torch.randn(2, 3 * n, D)
    state = co.init_state(2)
    for s in range(3 * n):
        out, state = co.step(X[:, s], state)
        if s >= n - 1:
            ref = co(X[:, s - n + 1 : s + 1], start=s - n + 1)
            torch.testing.assert_close(out.scores, ref, atol=2e-5, rtol=1e-4)


def test_paper_configuration():
    cfg = make_config("co_oadtr_b1")
    assert (cfg.d_in, cfg.d_model, cfg.window, cfg.heads, cfg.ffn, cfg.classes, cfg.pe_size) == (
        3072, 1024, 64, 8, 1024, 22, 127,
    )  # fmt: skip
    assert make_config("oadtr_b2", d_in=4096).blocks == 2
    m = get_model("oadtr_b1")
    assert m.encoder.layers[0].self_attn.in_proj_bias is None  # bias-free MHA as in CoOadTR
    assert m.encoder.layers[0].norm_first is False  # post-norm
    # Continual twin of the full-size b1, checked at a few steps after warm-up.
    co = m.to_continual()
    torch.manual_seed(0)
    X = torch.randn(1, 64 + 3, 3072)
    state = co.init_state(1)
    for s in range(X.shape[1]):
        out, state = co.step(X[:, s], state)
    ref = m.eval()(X[:, -64:], start=3)
    torch.testing.assert_close(out.scores, ref, atol=1e-4, rtol=1e-4)


def test_gtzan_paper_configuration():
    """The papers' GTZAN setting at full size: config values, then the continual one-block twin
    against its regular model over a few steps past warm-up (n = 120 tokens = 30 s)."""
    entries = {
        "gtzan_b1": (1, "softmax"), "gtzan_b2": (2, "softmax"),
        "nystrom_gtzan_b1": (1, "nystrom:m=12,landmarks=fixed"),
        "nystrom_gtzan_b2": (2, "nystrom:m=12,landmarks=fixed"),
    }  # fmt: skip
    for name, (blocks, attention) in entries.items():
        for n in (name, f"co_{name}"):
            cfg = make_config(n)
            assert (cfg.d_in, cfg.d_model, cfg.window, cfg.heads, cfg.ffn, cfg.classes) == (
                128, 192, 120, 16, 192, 10,
            )  # fmt: skip
            assert (cfg.blocks, cfg.attention, cfg.family) == (blocks, attention, "gtzan")
            assert cfg.pe_size >= 2 * cfg.window - 1 and model_info(n).continual == (n != name)
    torch.manual_seed(0)
    m = get_model("gtzan_b1").eval()
    assert m.embed.in_features == 128 and m.head.out_features == 10
    assert (
        m.encoder.layers[0].self_attn.num_heads == 16
        and m.encoder.layers[0].self_attn.in_proj_bias is None
    )
    assert sum(p.numel() for p in m.parameters()) == 295_306
    co = m.to_continual()
    X = torch.randn(2, 120 + 3, 128)
    state = co.init_state(2)
    for s in range(X.shape[1]):
        out, state = co.step(X[:, s], state)
        if s >= 119:
            ref = m(X[:, s - 119 : s + 1], start=s - 119)
            torch.testing.assert_close(out.scores, ref, atol=1e-4, rtol=1e-4)
    assert out.scores.shape == (2, 10) and bool(out.warm.all())
    nys = get_model("co_nystrom_gtzan_b1").encoder.layers[0].self_attn
    assert (nys.landmarks, nys.landmark_mode) == (12, "fixed")


def test_audio_step_accepts_mel_patches():
    torch.manual_seed(0)
    co = _small("co_audio_b2")
    x = torch.randn(2, 6, 3)  # (B, n_mels, patch)
    s1, s2 = co.init_state(2), co.init_state(2)
    a, _ = co.step(x, s1)
    b, _ = co.step(x.reshape(2, 18), s2)
    assert torch.equal(a.scores, b.scores)
    assert a.scores.shape == (2, 10)
    with pytest.raises(ValueError, match="D_in"):
        co.step(torch.randn(2, 17), co.init_state(2))


def test_registry_errors_are_clear():
    assert {"oadtr_b1", "oadtr_b2", "co_oadtr_b1", "co_oadtr_b2"} <= set(list_models())
    gtzan = {f"{p}{a}gtzan_b{b}" for p in ("", "co_") for a in ("", "nystrom_") for b in (1, 2)}
    assert gtzan <= set(list_models())
    with pytest.raises(KeyError, match="available"):
        get_model("oadtr_b9")
    with pytest.raises(ValueError, match="Unknown config key"):
        get_model("oadtr_b1", d_modle=8)
    with pytest.raises(ValueError, match="divisible"):
        get_model("oadtr_b1", d_model=10, heads=3)
    with pytest.raises(ValueError, match="pe_size"):
        get_model("oadtr_b1", window=64, pe_size=32)


def test_training_mode_uses_dropout_only_in_training():
    torch.manual_seed(0)
    m = _small("oadtr_b1", dropout=0.5)
    x = torch.randn(2, 5, 12)
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("name", ZOO)
def test_save_load_round_trip(tmp_path, name):
    torch.manual_seed(0)
    m = _small(name).eval()
    path = tmp_path / "m.safetensors"
    card = save_model(m, path, metrics={"val_mAP": 0.5})
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["sha256"] == card["sha256"] == read_card(path)["sha256"]
    assert on_disk["config"]["d_model"] == 16 and on_disk["metrics"] == {"val_mAP": 0.5}
    assert len(on_disk["classes"]) == m.config.classes
    x = torch.randn(2, m.window, m.config.d_in)
    reg, _ = load_model(path)
    torch.testing.assert_close(reg(x, 3), m(x, 3), atol=0, rtol=0)
    co, card2 = load_model(path, continual=True)
    assert isinstance(co, ContinualOnlineTransformer) and card2["continual_name"].startswith("co_")
    torch.testing.assert_close(co(x, 3), m(x, 3), atol=1e-6, rtol=1e-5)
    # A continual model saves the same keys: its file loads as a regular model too.
    save_model(co, tmp_path / "co.safetensors")
    reg2, _ = load_model(tmp_path / "co.safetensors")
    torch.testing.assert_close(reg2(x, 3), m(x, 3), atol=0, rtol=0)


def _tamper(tmp_path, change):
    torch.manual_seed(0)
    m = _small("oadtr_b1")
    good = tmp_path / "good.safetensors"
    save_model(m, good)
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(good))
    change(tensors)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    return bad


def test_load_refuses_missing_key(tmp_path):
    bad = _tamper(tmp_path, lambda t: t.pop("head.weight"))
    with pytest.raises(WeightsError, match=r"missing keys: head\.weight"):
        load_model(bad)


def test_load_refuses_extra_key(tmp_path):
    bad = _tamper(tmp_path, lambda t: t.__setitem__("head.extra", torch.zeros(3)))
    with pytest.raises(WeightsError, match=r"unexpected keys: head\.extra"):
        load_model(bad, continual=True)


def test_load_refuses_wrong_shape(tmp_path):
    bad = _tamper(tmp_path, lambda t: t.__setitem__("embed.weight", torch.zeros(16, 13)))
    with pytest.raises(
        WeightsError, match=r"wrong shapes: embed\.weight \(file \(16, 13\), model \(16, 12\)\)"
    ):
        load_model(bad)


def test_load_refuses_files_without_card_or_garbage(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(WeightsError, match="no costream model card"):
        load_model(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="Cannot read"):
        load_model(junk)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize(
    "name",
    ["co_oadtr_b1", "co_oadtr_b2", "co_audio_b2", "co_nystrom_oadtr_b1", "co_gtzan_b1",
     "co_gtzan_b2", "co_nystrom_gtzan_b1"],
)  # fmt: skip
def test_phase_comes_from_frame_index(name, dtype, tol):
    """Rows stepped with their frame indices equal the regular model at ``start = index - n + 1``
    whatever the first index (0, mid-stream, near 2**63), and a row reset mid-stream equals the
    uninterrupted row again once it has seen n frames (the restart-invariance of issue 11)."""
    torch.manual_seed(2)
    co = _small(name).to(dtype)
    n, D, M = co.window, co.config.d_in, co.config.pe_size
    first = torch.tensor([0, 1_000_003, 2**63 - 1 - 5 * n])  # each row's first frame index
    B, T = 3, 4 * n
    X = torch.randn(B, T, D, dtype=dtype)
    state, again = co.init_state(B), None
    reset_at = n + 3  # row 1 restarts here (a crash, a gap reset, an idle expiry)
    worst, checks = 0.0, 0
    for s in range(T):
        index = first + s
        if s == reset_at:
            again = state.clone()  # the uninterrupted twin continues from here
            state.reset([1])
        out, state = co.step(X[:, s], state, index)
        if again is not None:
            ref_out, again = co.step(X[:, s], again, index)
            if s - reset_at + 1 >= n:  # row 1 warm again: equal to the uninterrupted row
                assert bool(out.warm[1])
                worst = max(worst, (out.scores[1] - ref_out.scores[1]).abs().max().item())
        rows = [b for b in range(B) if bool(out.warm[b])]
        if rows:
            win = X[rows, s - n + 1 : s + 1]
            ref = co(win, start=index[rows] - n + 1)
            worst = max(worst, (out.scores[rows] - ref).abs().max().item())
            checks += len(rows)
    assert checks >= 3 * n and worst < tol
    # the phase really is the index: a row one frame off gives different scores
    a, _ = co.step(X[:, 0], co.init_state(B), first)
    b, _ = co.step(X[:, 0], co.init_state(B), first + 1)
    assert M > 1 and not torch.allclose(a.scores, b.scores)
    with pytest.raises(ValueError, match="index"):
        co.step(X[:, 0], co.init_state(B), first[:2])


def test_names_say_the_block_count(tmp_path):
    assert [n for n in list_models() if n.rpartition("_b")[2].isdigit()] == list_models()
    for name in list_models():
        assert make_config(name).blocks == int(name.rpartition("_b")[2]), name
    small = dict(d_in=4, d_model=8, window=4, heads=2, ffn=8, classes=2, pe_size=7)
    co = get_model("co_oadtr_b1", blocks=3, **small)
    assert co.name == "co_oadtr_b3" and co.config.blocks == 3
    card = save_model(co, tmp_path / "m.safetensors", classes=["a", "b"])
    assert (card["name"], card["continual_name"]) == ("oadtr_b3", "co_oadtr_b3")
    assert get_model("nystrom_oadtr_b1", **small).name == "nystrom_oadtr_b1"
