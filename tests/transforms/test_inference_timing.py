"""The per-frame time split of continual inference (issue 6): stepper timings and Beam metrics."""

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from costream.models.zoo import get_model, save_model
from costream.transforms.inference import ContinualInference
from costream.transforms.stepper import StreamStepper

from .test_inference import Rec

D_IN, N = 6, 4
LABELS = ["bg", "a", "b"]
TIMINGS = ("state_read_us", "serde_us", "model_us", "state_write_us", "frame_us")


@pytest.fixture(scope="module")
def regular():
    torch.manual_seed(0)
    return get_model(
        "oadtr_b2", d_in=D_IN, d_model=16, window=N, heads=2, ffn=16, classes=len(LABELS)
    ).eval()


@pytest.fixture(scope="module")
def weights(regular, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_model(regular, path, classes=LABELS)
    return str(path)


def feats(T, seed):
    return [f.astype(np.float32) for f in np.random.default_rng(seed).standard_normal((T, D_IN))]


def test_stepper_reports_decode_model_encode_times(regular):
    s = StreamStepper(regular.to_continual(), "m@1", LABELS)
    X = feats(3, 0)
    blob, first = s.process(None, "a", 0, 0, X[0])
    blob, second = s.process(blob, "a", 1, 1, X[1])
    for r in (first, second):
        assert r.decode_us > 0 and r.model_us > 0 and r.encode_us > 0
    # a step runs attention and the FFN; turning a few hundred bytes into tensors is cheaper
    assert second.model_us > second.decode_us
    kept, dup = s.process(blob, "a", 1, 1, X[1])
    assert kept is None and dup.events == ["duplicate"]
    assert dup.decode_us > 0 and dup.model_us == 0 and dup.encode_us == 0


def test_pipeline_reports_time_split_per_frame(weights):
    streams, frames = ("a", "b"), 3 * N
    X = {k: feats(frames, seed) for seed, k in enumerate(streams)}
    elements = [
        Rec(k, i, 1000 + i, X[k][i], None, k.encode(), b"", [])
        for i in range(frames)
        for k in streams
    ]
    elements.append(elements[5])  # a duplicate: read and decoded, never stepped nor written
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(elements) | ContinualInference(weights=weights, idle_timer=False)
    result = p.run()
    result.wait_until_finish()
    got = {
        d.key.metric.name: d.committed
        for d in result.metrics().query(MetricsFilter().with_namespace("costream"))["distributions"]
    }
    stepped = len(streams) * frames
    assert {name: got[name].count for name in TIMINGS} == {
        "state_read_us": stepped + 1,
        "serde_us": stepped + 1,
        "model_us": stepped,
        "state_write_us": stepped,
        "frame_us": stepped + 1,
    }
    assert all(got[name].min >= 0 for name in TIMINGS)
    assert got["model_us"].sum > 0 and got["serde_us"].sum > 0 and got["frame_us"].sum > 0
    # the parts are nested inside frame_us; each is rounded to whole microseconds on its own
    parts = sum(got[name].sum for name in TIMINGS[:-1])
    assert parts <= got["frame_us"].sum + 2 * got["frame_us"].count
    assert got["model_us"].sum > got["serde_us"].sum
