"""`costream train / evaluate / flops` in-process, and the shipped demo model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from costream.pipelines.cli import main

ASSETS = Path(__file__).resolve().parents[2] / "pipelines" / "assets"
SMALL = [
    "--set",
    "d_model=32",
    "--set",
    "window=8",
    "--set",
    "heads=4",
    "--set",
    "ffn=32",
    "--set",
    "pe_size=15",
]


def _macs(out: str, label: str) -> int:
    return int(re.search(rf"^{label}\s+([\d,]+)", out, re.M).group(1).replace(",", ""))


def test_flops_co_oadtr_b1_matches_the_paper(capsys):
    assert main(["flops", "co_oadtr_b1", "--feature-dim", "3072"]) == 0
    out = capsys.readouterr().out
    co, reg = _macs(out, "continual"), _macs(out, "regular")
    assert co == pytest.approx(9.6e6, rel=0.02)  # CoOadTR table: 9.6 M (paper convention)
    assert co == 9_598_998
    ratio = float(re.search(r"^ratio\s+([\d.]+)x", out, re.M).group(1))
    assert ratio >= 60 and ratio == pytest.approx(reg / co, abs=0.01)


def test_flops_other_models_and_list(capsys):
    assert main(["flops", "oadtr_b2", "--feature-dim", "4096"]) == 0
    out = capsys.readouterr().out
    assert _macs(out, "continual") == 411_918_358 and "2.61x" in out
    assert main(["flops", "co_audio_b2"]) == 0
    assert "clean convention" in capsys.readouterr().out
    assert main(["flops", "--list"]) == 0
    assert "co_oadtr_b2" in capsys.readouterr().out
    assert main(["flops", "nope"]) == 2
    assert "Unknown model" in capsys.readouterr().out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from costream.models.synthetic import SyntheticConfig, write_dataset

    root = tmp_path_factory.mktemp("syn")
    cfg = SyntheticConfig(feature_dim=16, min_frames=60, max_frames=90, seed=2)
    return write_dataset(root, cfg, {"train": 8, "test": 3})


def test_train_then_evaluate_continual(tmp_path, synthetic, capsys):
    out = tmp_path / "m.safetensors"
    code = main(["train", "--data", str(synthetic), "--model", "co_oadtr_b2", "--out", str(out),
                 "--steps", "60", "--eval-every", "30", "--batch-size", "16", "--no-progress", *SMALL])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "validation curve" in text
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["name"] == "oadtr_b2" and card["feature_dim"] == 16 and card["window"] == 8
    assert len(card["classes"]) == 6 and card["ambiguous"] == 5
    assert [h["step"] for h in card["metrics"]["history"]] == [30, 60]
    assert out.with_suffix(".curve.png").stat().st_size > 1000

    plot, report = tmp_path / "timeline.png", tmp_path / "report.json"
    code = main(["evaluate", "--data", str(synthetic), "--weights", str(out), "--continual",
                 "--plot", str(plot), "--json", str(report), "--no-progress"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert "identical up to rounding" in text
    reg = float(re.search(r"^regular\s+mAP ([\d.]+)", text, re.M).group(1))
    co = float(re.search(r"^continual mAP ([\d.]+)", text, re.M).group(1))
    assert reg == co
    r = json.loads(report.read_text())
    assert r["agree"] and r["max_abs_logit_diff"] < 1e-4
    assert r["continual"]["mAP"] == pytest.approx(r["regular"]["mAP"], abs=1e-9)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_clear(tmp_path, synthetic, capsys):
    assert (
        main(
            [
                "train",
                "--data",
                str(synthetic),
                "--model",
                "oadtr_b9",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert "Unknown model" in capsys.readouterr().out
    assert (
        main(
            ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.safetensors")]
        )
        == 2
    )
    assert "not a folder" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert main(["evaluate", "--data", str(synthetic), "--weights", str(bad)]) == 2
    assert "Cannot read weights file" in capsys.readouterr().out
    # The demo model expects 64-d features; this dataset has 16.
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(synthetic),
                "--weights",
                str(ASSETS / "demo_model.safetensors"),
            ]
        )
        == 2
    )
    assert "D_in=64" in capsys.readouterr().out


def test_plot_score_timeline(tmp_path):
    import numpy as np

    from costream.pipelines.plots import plot_score_timeline

    gt = np.zeros((50, 3))
    gt[10:20, 1] = gt[30:40, 2] = 1
    path = plot_score_timeline(
        np.random.default_rng(0).random((50, 3)), ["bg", "a", "b"], gt, tmp_path / "t.png", skip=[0]
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_shipped_demo_model(tmp_path):
    import torch

    from costream.models.synthetic import SyntheticConfig, make_dataset
    from costream.models.train import evaluate, predict_stream, predict_windows
    from costream.models.zoo import load_model

    weights = ASSETS / "demo_model.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert weights.stat().st_size < 2_000_000
    model, stored = load_model(weights)
    assert stored["sha256"] == card["sha256"]
    assert (
        card["feature_dim"] == model.config.d_in == 64 and card["continual_name"] == "co_oadtr_b1"
    )
    assert card["metrics"]["val_mAP"] > 3 * card["metrics"]["val_chance_mAP"]
    assert "synthetic" in card["notes"]["trained_on"]
    # Fresh held-out synthetic videos (another split of the same seed): streamed == regular.
    ds = make_dataset(SyntheticConfig(num_videos=3, feature_dim=64, split="demo-check"))
    co, _ = load_model(weights, continual=True)
    state = co.init_state(1)
    out, state = co.step(torch.zeros(1, 64), state)
    assert out.scores.shape == (1, len(card["classes"])) and not out.warm.item()
    m_reg = evaluate(predict_windows(model, ds), ds, model.window)
    m_co = evaluate(predict_stream(co, ds), ds, model.window)
    assert m_reg.mAP > 0.7 and abs(m_reg.mAP - m_co.mAP) < 1e-6
    # Streams that do not start at frame 0 (a camera up for days, a restart mid-stream): the
    # phase is the frame index, and the model was trained on random phases, so it keeps its
    # accuracy at any offset; continual == regular there too.
    for first in (12_345, 2**40 + 3):
        m_reg_k = evaluate(predict_windows(model, ds, first_index=first), ds, model.window)
        m_co_k = evaluate(predict_stream(co, ds, first_index=first), ds, model.window)
        assert abs(m_reg_k.mAP - m_co_k.mAP) < 1e-6
        assert abs(m_reg_k.mAP - m_reg.mAP) < 0.03, (first, m_reg_k.mAP, m_reg.mAP)
