"""Training on synthetic data beats chance; the streamed continual model scores the same mAP;
data readers read the documented layouts and refuse what they cannot read safely."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from costream.models.data import (
    DataFormatError,
    OadDataset,
    Video,
    load_dataset,
    one_hot,
    read_lstr,
)
from costream.models.synthetic import SyntheticConfig, chance_map, make_dataset, write_dataset
from costream.models.train import (
    TrainConfig,
    check_continual,
    class_weights,
    evaluate,
    predict_stream,
    predict_windows,
    train_model,
)
from costream.models.zoo import get_model

SMALL = dict(d_model=32, window=16, heads=4, ffn=64, pe_size=31)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train = make_dataset(SyntheticConfig(num_videos=24, split="train", seed=3))
    test = make_dataset(SyntheticConfig(num_videos=8, split="test", seed=3))  # held-out videos
    model = get_model("oadtr_b1", d_in=train.feature_dim, classes=train.num_classes, **SMALL)
    cfg = TrainConfig(steps=300, batch_size=32, eval_every=100, progress=False, seed=0)
    result = train_model(model, train, test, cfg)
    return model, train, test, result


def test_training_beats_chance_by_far(trained):
    model, _, test, result = trained
    chance = chance_map(test, model.window)
    # A random ranking scores its class's positive fraction: about 0.10 here (4 actions).
    assert 0.05 < chance < 0.15
    assert result.final["val_mAP"] > max(0.6, 5 * chance)
    assert [h["step"] for h in result.history] == [100, 200, 300]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_streamed_continual_model_scores_the_same(trained):
    model, _, test, result = trained
    regular = predict_windows(model, test)
    streamed = predict_stream(model.to_continual(), test, max_streams=3)  # several groups
    for a, b in zip(regular, streamed):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    m_reg, m_co = evaluate(regular, test, model.window), evaluate(streamed, test, model.window)
    assert m_reg.mAP == pytest.approx(result.final["val_mAP"], abs=1e-12)
    assert abs(m_co.mAP - m_reg.mAP) < 1e-6 and abs(m_co.mcAP - m_reg.mcAP) < 1e-6


def test_check_continual_reports_both_and_refuses_a_mismatch(trained, monkeypatch):
    model, _, test, result = trained
    m = check_continual(model, test)
    assert m["val_mAP"] == pytest.approx(result.final["val_mAP"], abs=1e-12)
    assert abs(m["val_mAP_continual"] - m["val_mAP"]) < 1e-6
    assert m["val_chance_mAP"] == chance_map(test, model.window)
    broken = model.to_continual()
    with torch.no_grad():
        broken.head.weight.mul_(-1)  # a "continual twin" that is not the same function
    monkeypatch.setattr(type(model), "to_continual", lambda self: broken)
    with pytest.raises(ValueError, match="differs from regular"):
        check_continual(model, test)


def test_one_hot_targets():
    y = one_hot(["b", "a", "b"], ["a", "b", "c"])
    assert y.dtype == np.float32 and y.tolist() == [[0, 1, 0], [1, 0, 0], [0, 1, 0]]
    with pytest.raises(DataFormatError, match=r"\['z'\] are not among the classes"):
        one_hot(["a", "z"], ["a", "b"])


def test_training_is_reproducible_from_the_seed():
    ds = make_dataset(SyntheticConfig(num_videos=3, min_frames=40, max_frames=60))
    params = []
    for _ in range(2):
        torch.manual_seed(5)
        m = get_model("oadtr_b2", d_in=ds.feature_dim, classes=ds.num_classes, **SMALL)
        train_model(m, ds, None, TrainConfig(steps=15, batch_size=8, progress=False, seed=7))
        params.append(m.state_dict())
    for k in params[0]:
        assert torch.equal(params[0][k], params[1][k]), k


def test_class_weights_downweight_background():
    ds = make_dataset(SyntheticConfig(num_videos=4))
    w = class_weights(ds, 16)
    assert w[0] < w[1:5].min()  # Background is the most frequent class
    assert w[5] == 0  # Ambiguous never trains
    flat = class_weights(ds, 16, "none")
    assert torch.allclose(flat[:5], flat[0].expand(5)) and flat[5] == 0
    with pytest.raises(ValueError, match="class weighting"):
        class_weights(ds, 16, "bogus")


def test_synthetic_is_deterministic_and_splits_differ():
    a = make_dataset(SyntheticConfig(num_videos=2, seed=1))
    b = make_dataset(SyntheticConfig(num_videos=2, seed=1))
    c = make_dataset(SyntheticConfig(num_videos=2, seed=1, split="test"))
    assert np.array_equal(a.videos[0].features, b.videos[0].features)
    assert not np.array_equal(a.videos[0].features[:10], c.videos[0].features[:10])
    assert a.class_names[0] == "Background" and a.ambiguous == a.num_classes - 1


def test_npz_layout_round_trip(tmp_path):
    write_dataset(tmp_path, SyntheticConfig(num_videos=3, feature_dim=8), {"train": 3, "test": 2})
    train, test = load_dataset(tmp_path, "train"), load_dataset(tmp_path, "test")
    assert (len(train), len(test), train.feature_dim, train.ambiguous) == (3, 2, 8, 5)
    assert json.loads((tmp_path / "dataset.json").read_text())["class_names"][-1] == "Ambiguous"
    with pytest.raises(DataFormatError, match="no split 'val'.*available splits"):
        load_dataset(tmp_path, "val")


def test_npz_errors_are_clear(tmp_path):
    np.savez(tmp_path / "v.npz", feats=np.zeros((4, 2)))
    with pytest.raises(DataFormatError, match="lacks array"):
        load_dataset(tmp_path, None)
    (tmp_path / "v.npz").unlink()
    np.savez(tmp_path / "v.npz", features=np.zeros((4, 2)), targets=np.zeros((5, 3)))
    with pytest.raises(DataFormatError, match="4 feature steps but 5 target rows"):
        load_dataset(tmp_path, None)
    (tmp_path / "v.npz").unlink()
    np.savez(tmp_path / "v.npz", features=np.array([object()]), targets=np.zeros((1, 3)))
    with pytest.raises(DataFormatError, match="without unpickling"):
        load_dataset(tmp_path, None)


def test_pickles_are_refused(tmp_path):
    (tmp_path / "thumos_all_feature_test_V3.pickle").write_bytes(b"\x80\x04N.")
    with pytest.raises(DataFormatError, match="not read"):
        load_dataset(tmp_path)
    with pytest.raises(DataFormatError, match="unpickling"):
        load_dataset(tmp_path / "thumos_all_feature_test_V3.pickle")


def _lstr(root, names, T=12, C=22):
    for sub, dim in (("rgb_kinetics_resnet50", 5), ("flow_kinetics_bninception", 3)):
        (root / sub).mkdir(parents=True)
        for i, n in enumerate(names):
            np.save(root / sub / f"{n}.npy", np.full((T, dim), i, dtype=np.float32))
    (root / "target_perframe").mkdir()
    for n in names:
        np.save(
            root / "target_perframe" / f"{n}.npy", np.eye(C, dtype=np.float32)[np.arange(T) % C]
        )


def test_lstr_layout_thumos_names(tmp_path):
    root = tmp_path / "THUMOS"
    _lstr(root, ["video_validation_0000051", "video_validation_0000052", "video_test_0000004"])
    train, test = read_lstr(root, "train"), load_dataset(root, "test")
    assert [v.name for v in train] == ["video_validation_0000051", "video_validation_0000052"]
    assert [v.name for v in test] == ["video_test_0000004"]
    assert train.feature_dim == 8  # rgb 5 + flow 3, concatenated per step
    assert np.all(train.videos[1].features == 1)
    assert train.class_names[0] == "Background" and train.ambiguous == 21


def test_lstr_layout_with_data_info(tmp_path):
    root = tmp_path / "TVSeries"
    _lstr(root, ["a", "b", "c"], C=31)
    info = {"TVSeries": {"class_names": [f"k{i}" for i in range(31)], "num_classes": 31,
                         "ignore_index": -100, "train_session_set": ["a", "c"], "test_session_set": ["b"]}}  # fmt: skip
    (tmp_path / "data_info.json").write_text(json.dumps(info))
    train = read_lstr(root, "train")
    assert [v.name for v in train] == ["a", "c"] and train.ambiguous is None
    assert train.class_names[1] == "k1"


def test_dataset_checks_shapes():
    with pytest.raises(DataFormatError, match="all videos must agree"):
        OadDataset(
            [
                Video("a", np.zeros((3, 4)), np.zeros((3, 2))),
                Video("b", np.zeros((3, 5)), np.zeros((3, 2))),
            ],
            ["x", "y"],
        )
