"""Issue 16 item 4 papercuts in the CLI: streaming score, one-line errors, plots, demo rates."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from costream.connectors import contract, sources
from costream.pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "pipelines" / "specs" / "features.yaml"  # the demo model: window 16, D = 64


def _lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        d = json.loads(line)
        d.pop("latency_ms")
        out.append(d)
    return out


def _same(a: dict, b: dict) -> bool:  # as tests/pipelines/test_restarts.py after a warm restart
    scores_a, scores_b = a.pop("scores"), b.pop("scores")
    a["top"].pop("score"), b["top"].pop("score")
    return a == b and np.allclose(scores_a, scores_b, rtol=1e-5, atol=1e-6)


# -- 1: score streams in chunks, same output -------------------------------------------------


@pytest.fixture(scope="module")
def features_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("feat") / "f.npy"
    np.save(path, np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32))
    return path


def test_score_output_is_unchanged_when_chunked(features_file, capsys):
    from costream.pipelines.offline import score_records

    records = [r for r, _ in sources.open_source(str(features_file), "file", start_ms=0).records]
    whole, dead = score_records(FEATURES, records)  # what `costream score` printed before
    assert not dead and len(whole) == 50
    want = _lines("".join(r.value.decode() + "\n" for r in whole))

    # one chunk (the default for a file this short): byte-identical but for latency_ms
    assert main(["score", str(FEATURES), "--input", str(features_file), "--quiet"]) == 0
    out = capsys.readouterr()
    assert _lines(out.out) == want
    assert out.err.strip().splitlines()[-1] == "50 detections, 0 dead letters"

    # chunks of 12 records (5 pipeline runs), each rebuilt from the 16 records before it
    assert (
        main(["score", str(FEATURES), "--input", str(features_file), "--chunk-records", "12"]) == 0
    )
    got = _lines(capsys.readouterr().out)
    assert [(d["frame_index"], d["warm"]) for d in got] == [(i, i >= 15) for i in range(50)]
    assert all(_same(g, w) for g, w in zip(got, want))


def test_iter_scores_reads_the_source_a_chunk_at_a_time():
    from costream.pipelines.offline import iter_scores

    pulled = 0

    def endless():  # a source of unbounded length: a list of it would never end
        nonlocal pulled
        rng = np.random.default_rng(1)
        for i in itertools.count():
            pulled += 1
            if pulled > 100:
                raise AssertionError("iter_scores read far past the chunk it runs")
            payload, ct = contract.encode_features(rng.standard_normal(64).astype(np.float32))
            yield contract.frame_record("cam", i, 40 * i, ct, payload)

    chunks = iter_scores(FEATURES, endless(), chunk_records=20)
    first_out, _ = next(chunks)
    assert pulled == 20 and len(first_out) == 20  # read one chunk, scored it
    second_out, _ = next(chunks)
    assert pulled == 40
    frames = [
        int(contract.header_value(r.headers, contract.HEADER_FRAME_INDEX)) for r in second_out
    ]
    assert frames == list(range(20, 40))  # the replayed 16 before it emitted nothing
    with pytest.raises(ValueError, match="chunk_records must be at least 1"):
        next(iter_scores(FEATURES, [], chunk_records=0))


def test_score_progress_bar_only_on_a_terminal(features_file, tmp_path):
    # stderr is a file here (not a TTY): no bar, only the summary line
    res = subprocess.run(
        [sys.executable, "-m", "costream.pipelines.cli", "score", str(FEATURES), "--input",
         str(features_file), "--limit", "20", "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "20 detections, 0 dead letters"
    assert len(res.stdout.splitlines()) == 20


# -- 5: one-line errors ----------------------------------------------------------------------


def _costream(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "costream.pipelines.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nope.yaml"], "costream run: error: nope.yaml: cannot read the spec"),
        (["score", "nope.yaml", "--input", "synthetic:video"], "costream score: error: nope.yaml"),
        (
            ["score", str(FEATURES), "--input", "missing.mp4"],
            "Source 'missing.mp4' does not exist.",
        ),
    ],
)
def test_user_errors_are_one_line(argv, message):
    res = _costream(*argv)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"costream {argv[0]}: error: ")
    assert message in res.stderr
    debug = _costream(*argv, "--log-level", "DEBUG")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    env = _costream(*argv, COSTREAM_TRACEBACK="1")
    assert env.returncode != 0 and "Traceback" in env.stderr


def test_bad_weights_are_one_line(tmp_path, features_file):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights")
    res = _costream(
        "score", str(FEATURES), "--input", str(features_file), COSTREAM_WEIGHTS=str(bad)
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "costream score: error:" in res.stderr and "bad.safetensors" in res.stderr


def test_bugs_keep_their_traceback():
    from costream.pipelines.cli import is_user_error
    from costream.pipelines.spec import SpecError

    assert is_user_error(SpecError("x")) and is_user_error(FileNotFoundError(2, "No such", "f"))
    assert not is_user_error(KeyError("x")) and not is_user_error(ValueError("numpy says"))


# -- 6: consume --plot ------------------------------------------------------------------------


@pytest.mark.integration
def test_consume_plot_writes_a_png(kafka_broker, kafka_topics, tmp_path, capsys):
    from kafka import KafkaProducer

    topic = kafka_topics()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for cam in ("cam-1", "cam-2"):
        for i in range(4):
            det = contract.make_detection(cam, i, 1000 + i, [0.3, 0.7], ["bg", "act"], warm=True,
                                          model="m@0123", latency_ms=1.0)  # fmt: skip
            r = contract.detection_record(det)
            producer.send(topic, key=r.key, value=r.value, headers=r.headers).get(5)
    producer.close()
    png = tmp_path / "plots" / "top.png"
    argv = ["consume", "--bootstrap", kafka_broker.bootstrap, "--topic", topic,
            "--from-beginning", "--max", "8", "--plot", str(png)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 8 and "plot of 2 stream(s)" in out.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_scores_figure_has_a_line_and_legend_entry_per_stream():
    from costream.pipelines.plots import top_scores_figure

    fig = top_scores_figure({"cam-1": [(1, 0.5), (0, 0.9)], "cam-2": [(0, 0.2)]})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cam-1", "cam-2"]
    assert list(ax.lines[0].get_xdata()) == [0, 1] and list(ax.lines[0].get_ydata()) == [0.9, 0.5]


# -- 7: the synthetic generators are reachable as the README says ---------------------------------


def test_readme_synthetic_paragraph_commands_work(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "python -m costream.models.synthetic OUT" in readme
    assert "costream produce synthetic:video" in readme
    res = subprocess.run(
        [sys.executable, "-m", "costream.models.synthetic", str(tmp_path / "d"), "--train", "2",
         "--test", "1", "--dim", "8"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "d" / "train").glob("*.npz"))) == 2
    assert len(list((tmp_path / "d" / "test").glob("*.npz"))) == 1


# -- 8: the demo's rates --------------------------------------------------------------------------


def test_demo_summary_names_processing_and_input_rates():
    from costream.pipelines.commands.demo import summarize

    dets = {c: [{"latency_ms": 5.0, "ts_ms": 1000 + 100 * i} for i in range(10)] for c in "ab"}
    s = summarize(
        dets, 0, cameras=2, frames=10, fps=10.0, first_sent_s=100.0, last_received_s=104.0
    )
    assert s["input_frames_per_s"] == 20.0  # 2 cameras at 10 fps
    assert s["processing_s"] == 4.0 and s["processing_frames_per_s"] == 5.0  # 20 frames in 4 s
    assert "frames_per_s" not in s and s["detections"] == 20 and s["latency_ms_p50"] == 5.0
    none = summarize({}, 0, cameras=1, frames=5, fps=10.0, first_sent_s=1.0, last_received_s=1.0)
    assert none["processing_frames_per_s"] is None and none["input_frames_per_s"] == 10.0


# -- 9: the demo's timeline has a legend ----------------------------------------------------------


def test_score_timeline_figure_has_a_legend(tmp_path):
    from costream.pipelines.plots import plot_score_timeline, score_timeline_figure

    gt = np.zeros((30, 3))
    gt[5:10, 1] = 1
    ignored = np.zeros(30, bool)
    ignored[20:22] = True
    scores = np.random.default_rng(0).random((30, 3))
    fig = score_timeline_figure(scores, ["bg", "a", "b"], gt, skip=[0], ignored=ignored)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["score", "ground truth", "ignored"]
    path = plot_score_timeline(scores, ["bg", "a", "b"], gt, tmp_path / "t.png", skip=[0])
    assert path.read_bytes()[:4] == b"\x89PNG"
