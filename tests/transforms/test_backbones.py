from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as _TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from costream.connectors import contract
from costream.connectors.contract import CT_JPEG, CT_PNG, frame_record
from costream.connectors.kafka import as_outgoing
from costream.models.logmel import LogMelOptions, LogMelSpectrogram
from costream.models.resnet import fold_batch_norm, resnet18
from costream.models.weights import WeightsError, save_weights
from costream.transforms.backbones import BackboneConfig
from costream.transforms.decode import decode_record, resize_rgb
from costream.transforms.feature_handler import FeatureModelHandler
from costream.transforms.features import ExtractFeatures
from costream.transforms.records import FeatureRecord, as_array


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # load_model sets torch.set_num_threads(1) process-wide (as a worker would); undo it.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def BeamPipeline():
    # The embedded runner costream uses (pipelines/runner.py). Beam's DirectRunner picks its
    # bundle-based runner for real-time timers, which can lose the final flush of the stateful
    # BatchElements at the end of a bounded input.
    return _TestPipeline(runner=FnApiRunner())


def _image(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _small(**kw):
    return BackboneConfig("resnet18_small", weights="random", input_size=32, **kw)


# -- CNN -------------------------------------------------------------------------------------------
def test_backbone_dims_by_name():
    # the module itself: tests/models/test_resnet.py
    assert BackboneConfig("resnet18", weights="random").feature_dim == 512
    assert BackboneConfig("resnet18", weights="random").image_size == (224, 224)
    assert BackboneConfig("resnet18_small", weights="random").image_size == (112, 112)
    assert BackboneConfig("logmel").feature_dim == 512
    assert BackboneConfig("logmel", logmel=LogMelOptions(patch=4)).chunk_samples == 640


def test_resnet_shape_determinism_and_batch_rows():
    x = torch.from_numpy(np.stack([_image(32, 32, s) for s in range(3)]))
    a, b = _small().build(), _small().build()
    with torch.inference_mode():
        ya, yb, other = a(x), b(x), _small(seed=1).build()(x)
        row = a(x[1:2])
    assert ya.shape == (3, 128) and ya.dtype == torch.float32
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)  # same seed: same weights, same output
    assert not torch.allclose(ya, other)
    # a batch of one runs other kernels: float32 rounding, relative to the features' scale
    torch.testing.assert_close(row[0], ya[1], rtol=1e-5, atol=1e-5 * ya.abs().max().item())


def test_weights_round_trip_and_refusals(tmp_path):
    net = _small(seed=3).build(fold=False)
    path = tmp_path / "r18s.safetensors"
    save_weights(net, path)
    loaded = BackboneConfig("resnet18_small", weights=str(path), input_size=32).build()
    x = torch.from_numpy(_image(32, 32)[None])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), fold_batch_norm(net)(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-6)  # folded: rounding
    assert (
        BackboneConfig("resnet18_small", weights=str(path)).identity().startswith("resnet18_small@")
    )
    with pytest.raises(WeightsError, match="does not fit"):  # width 1 file into width 0.25
        save_weights(resnet18(), tmp_path / "full.safetensors")
        BackboneConfig("resnet18_small", weights=str(tmp_path / "full.safetensors")).build()
    with pytest.raises(ValueError, match="needs weights"):
        BackboneConfig("resnet18")
    with pytest.raises(ValueError, match="has no weights"):
        BackboneConfig("logmel", weights="random")
    with pytest.raises(ValueError, match="Unknown backbone 'vgg'.*resnet18"):
        BackboneConfig("vgg")
    with pytest.raises(TypeError, match="colour"):
        ExtractFeatures("identity", colour=1)


# -- handler, without Beam ----------------------------------------------------------------------
def test_handler_routes_frames_that_do_not_fit():
    cfg = _small()
    h = FeatureModelHandler(cfg, max_batch_size=4)
    model = h.load_model()
    assert torch.get_num_threads() == 1
    img = frame_record("a", 0, 0, CT_PNG, contract.encode_png(_image()))
    pcm = frame_record(
        "b", 0, 0, contract.audio_content_type(16000), contract.encode_l16(np.zeros(8))
    )
    good = decode_record(img.key, img.value, img.headers, image_size=32)
    wrong_size = decode_record(img.key, img.value, img.headers)
    audio = decode_record(pcm.key, pcm.value, pcm.headers)
    out = list(h.run_inference([good._replace(timestamp_us=7), wrong_size, audio, good], model))
    assert isinstance(out[0].record, FeatureRecord) and isinstance(out[3].record, FeatureRecord)
    assert out[0].timestamp_us == 7
    np.testing.assert_array_equal(
        as_array(out[0].record.features), as_array(out[3].record.features)
    )
    assert "uint8 images of shape (32, 32, 3)" in out[1].error
    assert "takes image records; this record holds audio" in out[2].error


# -- Beam ------------------------------------------------------------------------------------------
def _key(r):
    return (r.stream_id, r.frame_index, r.ts_ms, as_array(r.features).tobytes())


def test_extract_features_pipeline_exact_and_dead_letters():
    images = [_image(24, 32, s) for s in range(4)]
    good = [
        frame_record(f"cam-{i % 2}", i // 2, 100 * i, CT_PNG, contract.encode_png(im))
        for i, im in enumerate(images)
    ]
    corrupt = frame_record("cam-0", 9, 900, CT_JPEG, contract.encode_jpeg(images[0])[:40])
    audio = frame_record(
        "mic", 0, 0, contract.audio_content_type(16000), contract.encode_l16(np.zeros(1280))
    )
    net = _small().build()
    with torch.inference_mode():  # one batch: a frame's features do not depend on its batch
        vecs = net(torch.from_numpy(np.stack([resize_rgb(im, 32) for im in images]))).numpy()
    expected = []
    for rec, vec in zip(good, vecs):
        expected.append((rec.key.decode(), int(dict(rec.headers)[contract.HEADER_FRAME_INDEX]),
                         int(dict(rec.headers)[contract.HEADER_TS_MS]), vec.tobytes()))  # fmt: skip
    with BeamPipeline() as p:
        out = (
            p
            | beam.Create([*good, corrupt, audio])
            | ExtractFeatures(
                "resnet18_small",
                weights="random",
                input_size=32,
                batch_size=1,
                max_batch_duration_secs=None,
            )
        )
        assert_that(out.main | beam.Map(_key), equal_to(expected), label="main")
        assert_that(
            out.dead_letter
            | "Wire" >> beam.Map(as_outgoing)
            | beam.Map(lambda r: (r.key, r.value, dict(r.headers)[contract.HEADER_STAGE])),
            equal_to(
                [(corrupt.key, corrupt.value, b"decode"), (audio.key, audio.value, b"features")]
            ),
            label="dead",
        )


def test_extract_features_logmel_batched_across_streams():
    rng = np.random.default_rng(1)
    chunks = [(0.2 * rng.standard_normal(1280)).astype(np.float32) for _ in range(6)]
    ct = contract.audio_content_type(16000)
    recs = [frame_record(f"mic-{i % 3}", i // 3, 80 * i, ct, contract.encode_l16(c)) for i, c in enumerate(chunks)]  # fmt: skip
    short = frame_record("mic-9", 0, 0, ct, contract.encode_l16(chunks[0][:1000]))
    fe = LogMelSpectrogram()
    expected = []
    for r in recs:
        x = as_array(decode_record(r.key, r.value, r.headers).data)
        vec = fe(torch.from_numpy(x)[None])[0].numpy()
        expected.append((r.key.decode(), int(dict(r.headers)[contract.HEADER_FRAME_INDEX]),
                         int(dict(r.headers)[contract.HEADER_TS_MS]), vec))  # fmt: skip

    def close_to(want):
        def check(actual):
            got = sorted(
                (a.stream_id, a.frame_index, a.ts_ms, as_array(a.features)) for a in actual
            )
            assert [g[:3] for g in got] == [w[:3] for w in sorted(want, key=lambda w: w[:3])]
            for g, w in zip(got, sorted(want, key=lambda w: w[:3])):
                assert g[3].dtype == np.float32 and g[3].shape == (512,)
                np.testing.assert_allclose(g[3], w[3], rtol=1e-5, atol=1e-5)

        return check

    with BeamPipeline() as p:
        out = (
            p
            | beam.Create([*recs, short])
            | ExtractFeatures("logmel", batch_size=4, max_batch_duration_secs=0.05)
        )
        assert_that(out.main, close_to(expected), label="main")
        assert_that(
            out.dead_letter
            | "Wire" >> beam.Map(as_outgoing)
            | beam.Map(
                lambda r: (
                    dict(r.headers)[contract.HEADER_STAGE],
                    b"1280 samples" in dict(r.headers)[contract.HEADER_ERROR],
                )
            ),
            equal_to([(b"features", True)]),
            label="dead",
        )


@pytest.mark.parametrize("backbone", ["identity", "resnet18_small"])
@pytest.mark.parametrize("duration", [None, 0.05])
@pytest.mark.parametrize("runner", ["FnApiRunner", "BundleBasedDirectRunner"])
def test_extract_features_loses_nothing_and_never_moves_time_back(
    duration, runner, backbone, caplog
):
    # On the BundleBasedDirectRunner, Beam's stateful batching delivered the batch flushed at the
    # end of the input after the assert's GroupByKey had closed: the dead letter (the last record)
    # was missing in 3 of 5 runs. ExtractFeatures batches within bundles there instead, and says so.
    # identity runs no model and batches nothing; a ResNet batches.
    ct = contract.features_content_type(4)
    if backbone == "identity":
        recs = [frame_record("s", i, i, ct, np.full(4, i, "<f4").tobytes()) for i in range(5)]
        kw = {"dim": 4}
    else:
        img = contract.encode_png(_image())
        recs = [frame_record("s", i, i, CT_PNG, img) for i in range(5)]
        kw = {"weights": "random", "input_size": 32}
    recs.append(  # the wrong kind or size for the backbone: a dead letter at stage features
        frame_record("s", 9, 9, contract.features_content_type(3), np.zeros(3, "<f4").tobytes())
    )

    def stamp(r):
        return beam.window.TimestampedValue(
            r, 10 + int(dict(r.headers)[contract.HEADER_FRAME_INDEX])
        )

    def with_ts(e, ts=beam.DoFn.TimestampParam):
        yield e, ts

    pipeline = BeamPipeline() if runner == "FnApiRunner" else _TestPipeline(runner=runner)
    with caplog.at_level("WARNING", logger="costream.transforms.features"), pipeline as p:
        out = (
            p
            | beam.Create(recs)
            | beam.Map(stamp)
            | ExtractFeatures(backbone, batch_size=2, max_batch_duration_secs=duration, **kw)
        )
        assert_that(
            out.main
            | "MainTs" >> beam.ParDo(with_ts)
            | "MainKey"
            >> beam.Map(lambda x: (x[0].frame_index, float(x[1]) >= 10 + x[0].frame_index)),
            equal_to([(i, True) for i in range(5)]),
            label="main",
        )
        assert_that(
            out.dead_letter
            | "DeadTs" >> beam.ParDo(with_ts)
            | "DeadKey" >> beam.Map(lambda x: float(x[1]) >= 19.0),
            equal_to([True]),
            label="dead",
        )
    warned = "max_batch_duration_secs ignored" in caplog.text
    batches = backbone != "identity"
    assert warned == (runner == "BundleBasedDirectRunner" and duration is not None and batches)


def test_extract_features_max_payload_bytes_dead_letters_larger_records():
    ct = contract.features_content_type(4)
    small = frame_record("s", 0, 0, ct, np.arange(4, dtype="<f4").tobytes())  # 16 bytes
    big = frame_record("s", 1, 1, contract.features_content_type(8), np.ones(8, "<f4").tobytes())
    with BeamPipeline() as p:
        out = (
            p
            | beam.Create([small, big])
            | ExtractFeatures("identity", max_payload_bytes=16, max_batch_duration_secs=None)
        )
        assert_that(out.main | beam.Map(lambda r: r.frame_index), equal_to([0]), label="main")
        assert_that(
            out.dead_letter
            | "Wire" >> beam.Map(as_outgoing)
            | beam.Map(
                lambda r: (
                    r.value,
                    dict(r.headers)[contract.HEADER_STAGE],
                    dict(r.headers)[contract.HEADER_ERROR].decode(),
                )
            ),
            equal_to(
                [(big.value, b"decode", "The payload is 32 bytes, above the limit of 16 bytes.")]
            ),
            label="dead",
        )


@pytest.mark.parametrize("bad", [0, -1, "1e6", "", 1.5, True, None])
def test_extract_features_refuses_bad_max_payload_bytes(bad):
    with pytest.raises(ValueError, match="max_payload_bytes must be a positive whole number"):
        ExtractFeatures("identity", max_payload_bytes=bad)


@pytest.mark.parametrize("spec", ["video", "audio", "features"])
def test_specs_take_max_payload_bytes_from_the_environment(spec, monkeypatch):
    from costream.pipelines import configs as yaml_config
    from costream.pipelines.spec import load_spec

    path = Path(__file__).resolve().parents[2] / "pipelines" / "specs" / f"{spec}.yaml"

    def limit():
        (cfg,) = [t["config"] for t in load_spec(path)["pipeline"]["transforms"]
                  if t["type"] == "ExtractFeatures"]  # fmt: skip
        kwargs = yaml_config.python_kwargs(yaml_config.parse_config("ExtractFeatures", cfg))
        return ExtractFeatures(**kwargs).max_payload_bytes  # the YAML keys as Python keywords

    monkeypatch.delenv("COSTREAM_MAX_PAYLOAD_BYTES", raising=False)
    assert limit() == 1 << 20  # Kafka's default largest message
    monkeypatch.setenv("COSTREAM_MAX_PAYLOAD_BYTES", "262144")
    assert limit() == 262144


def test_record_features_is_the_pipelines_path_offline():
    from costream.transforms.feature_handler import record_features

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5, 6)).astype(np.float32)
    ct = contract.features_content_type(6)
    records = [contract.frame_record("s", i, i, ct, v.tobytes()) for i, v in enumerate(vecs)]
    cfg = BackboneConfig("identity", dim=6)
    np.testing.assert_array_equal(record_features(cfg.build(), cfg, records, batch_size=2), vecs)
    bad = contract.frame_record("s", 9, 9, contract.features_content_type(4), vecs[0, :4].tobytes())
    with pytest.raises(ValueError):
        record_features(cfg.build(), cfg, [bad])


@pytest.mark.parametrize("backbone", ["resnet18_small", "logmel"])
def test_features_do_not_depend_on_how_frames_are_batched(backbone):
    """Streaming batches group frames by arrival; `costream score` must see the same features."""
    from costream.transforms.feature_handler import batch_features

    cfg = BackboneConfig(backbone, **({"weights": "random"} if backbone != "logmel" else {}))
    net, rng = cfg.build(), np.random.default_rng(0)
    if backbone == "logmel":
        inputs = [rng.standard_normal(cfg.chunk_samples).astype(np.float32) for _ in range(9)]
    else:
        inputs = [rng.integers(0, 255, (*cfg.image_size, 3), dtype=np.uint8) for _ in range(9)]
    batched = batch_features(net, inputs)
    for i in (0, 4, 8):
        np.testing.assert_array_equal(batch_features(net, [inputs[i]])[0], batched[i])
    np.testing.assert_array_equal(batch_features(net, inputs[3:5])[1], batched[4])


def test_feature_counters_have_stage_names():
    from apache_beam.metrics.metric import MetricsFilter

    from costream.transforms import counters

    vec = np.arange(4, dtype=np.float32)
    payload, ct = contract.encode_features(vec)
    good = [frame_record("s", i, i, ct, payload) for i in range(3)]
    payload5, ct5 = contract.encode_features(np.zeros(5))
    wrong_dim = frame_record("s", 3, 3, ct5, payload5)
    corrupt = frame_record("s", 4, 4, CT_JPEG, b"\xff\xd8\xff\x00")
    counters.reset()
    p = _TestPipeline()
    _ = (
        p
        | beam.Create([*good, wrong_dim, corrupt])
        | ExtractFeatures("identity", dim=4, batch_size=2, max_batch_duration_secs=None)
    )
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace("costream.features"))
    named = {c.key.metric.name: c.committed for c in query["counters"]}
    assert named["features"] == 3 and named["features_dead_letters"] == 1
    assert "dead_letter" not in named
    totals = counters.snapshot()
    assert (totals["features"], totals["features_dead_letters"]) == (3, 1)
    assert totals["decoded"] == 4 and totals["decode_dead_letters"] == 1
