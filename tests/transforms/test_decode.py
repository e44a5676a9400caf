import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.coders import FastPrimitivesCoder, PickleCoder
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from costream.connectors import contract
from costream.connectors.contract import CT_JPEG, CT_PNG, frame_record
from costream.connectors.kafka import as_outgoing
from costream.transforms.decode import DecodeFrames, decode_record, image_size_hw, resize_rgb
from costream.transforms.records import (
    DecodedFrame,
    FeatureRecord,
    TaggedOutputs,
    as_array,
    to_dead_letter,
)


def _image(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_decode_png_exact_and_resized():
    rgb = _image()
    rec = frame_record("cam-1", 3, 1234, CT_PNG, contract.encode_png(rgb))
    f = decode_record(rec.key, rec.value, rec.headers, now_ms=99)
    assert (f.stream_id, f.frame_index, f.ts_ms, f.kind, f.rate, f.arrival_ms) == (
        "cam-1", 3, 1234, "image", 0, 99,
    )  # fmt: skip
    np.testing.assert_array_equal(as_array(f.data), rgb)
    assert (f.key, f.value, f.headers) == (rec.key, rec.value, rec.headers)
    small = decode_record(rec.key, rec.value, rec.headers, image_size=(15, 20))
    np.testing.assert_array_equal(
        as_array(small.data), cv2.resize(rgb, (20, 15), interpolation=cv2.INTER_AREA)
    )


def test_resize_rgb():
    rgb = _image()
    assert resize_rgb(rgb, (30, 40)) is rgb or np.array_equal(resize_rgb(rgb, (30, 40)), rgb)
    assert resize_rgb(rgb, 64).shape == (64, 64, 3)
    np.testing.assert_array_equal(
        resize_rgb(rgb, 64), cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_LINEAR)
    )
    assert image_size_hw(7) == (7, 7) and image_size_hw((3, 5)) == (3, 5)
    with pytest.raises(ValueError, match="positive int"):
        image_size_hw((0, 5))


def test_decode_audio_and_features():
    x = np.linspace(-0.5, 0.5, 160, dtype=np.float32)
    rec = frame_record("mic", 0, 0, contract.audio_content_type(16000), contract.encode_l16(x))
    f = decode_record(rec.key, rec.value, rec.headers)
    assert f.kind == "audio" and f.rate == 16000 and as_array(f.data).dtype == np.float32
    np.testing.assert_allclose(as_array(f.data), x, atol=1 / 32768)
    vec = np.arange(5, dtype=np.float32)
    payload, ct = contract.encode_features(vec)
    f = decode_record(b"s", payload, frame_record("s", 1, 2, ct, payload).headers)
    assert f.kind == "features" and f.rate == 0
    np.testing.assert_array_equal(as_array(f.data), vec)


def test_decode_errors_are_codec_errors():
    good = frame_record("cam-1", 0, 0, CT_JPEG, contract.encode_jpeg(_image()))
    with pytest.raises(contract.PayloadDecodeError):
        decode_record(good.key, good.value[:3] + b"garbage" * 10, good.headers)
    with pytest.raises(contract.MissingHeaderError, match="costream.frame_index"):
        decode_record(good.key, good.value, good.headers[1:])


def test_records_survive_beam_coders():
    f = DecodedFrame("s", 1, 2, "image", _image(4, 5), 0, 3, b"s", b"v", [("h", b"1")])
    r = FeatureRecord("s", 1, 2, np.arange(4, dtype=np.float32), 3, None, b"v", [("h", b"1")])
    for coder in (FastPrimitivesCoder(), PickleCoder()):
        for rec in (f, r):
            back = coder.decode(coder.encode(rec))
            assert type(back) is type(rec) and back._fields == rec._fields
            for a, b in zip(back, rec):
                if isinstance(b, np.ndarray):
                    assert a.dtype == b.dtype
                    np.testing.assert_array_equal(a, b)
                else:
                    assert a == b
    dl = contract.dead_letter_to_record(to_dead_letter(r, "bad thing", "inference"))
    assert dl.value == b"v" and dict(dl.headers)["costream.stage"] == b"inference"


def test_tagged_outputs_attribute_access():
    out = TaggedOutputs(main=1, dead_letter=2)
    assert out.main == 1 and out["dead_letter"] == 2
    with pytest.raises(AttributeError, match="main, dead_letter|dead_letter, main"):
        _ = out.other


def test_decode_frames_pipeline_routes_bad_records():
    rgb = _image()
    good = frame_record("cam-1", 0, 10, CT_PNG, contract.encode_png(rgb))
    corrupt = frame_record("cam-1", 1, 20, CT_JPEG, b"\xff\xd8\xff" + b"\x00" * 50)
    no_key = contract.OutgoingRecord(None, good.value, good.headers)
    with BeamPipeline() as p:
        out = p | beam.Create([good, corrupt, no_key]) | DecodeFrames(image_size=8)
        assert_that(
            out.main | beam.Map(lambda f: (f.stream_id, f.frame_index, as_array(f.data).tobytes())),
            equal_to([("cam-1", 0, resize_rgb(rgb, 8).tobytes())]),
            label="main",
        )
        assert_that(
            out.dead_letter
            | "Wire" >> beam.Map(as_outgoing)
            | beam.Map(
                lambda r: (
                    r.key,
                    r.value,
                    dict(r.headers)["costream.stage"],
                    dict(r.headers)["costream.error"].decode().endswith("."),
                )
            ),
            equal_to(
                [(corrupt.key, corrupt.value, b"decode", True), (None, good.value, b"decode", True)]
            ),
            label="dead_letter",
        )


def test_decode_counters_have_stage_names():
    from apache_beam.metrics.metric import MetricsFilter

    from costream.transforms import counters

    good = frame_record("cam-1", 0, 10, CT_PNG, contract.encode_png(_image()))
    corrupt = frame_record("cam-1", 1, 20, CT_JPEG, b"\xff\xd8\xff" + b"\x00" * 50)
    counters.reset()
    p = BeamPipeline()
    _ = p | beam.Create([good, corrupt, corrupt]) | DecodeFrames(image_size=8)
    result = p.run()
    result.wait_until_finish()
    beam_counts = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("costream.decode"))[
            "counters"
        ]
    }
    assert beam_counts == {"decoded": 1, "decode_dead_letters": 2}
    totals = counters.snapshot()
    assert totals["decoded"] == 1 and totals["decode_dead_letters"] == 2
    assert "dead_letter" not in totals


def _photo(h=240, w=320):
    """Smooth gradients plus noise: JPEG-like content (a random image does not compress)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 0.8) % 256, yy % 256, ((xx + yy) * 0.5) % 256], -1)
    noise = np.random.default_rng(0).integers(0, 16, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("at_least", "decoded"),
    [(None, (240, 320)), ((112, 112), (120, 160)), ((121, 100), (240, 320)),
     ((60, 80), (60, 80)), ((30, 40), (30, 40)), ((29, 1), (30, 40))],
)  # fmt: skip
def test_jpeg_decodes_at_the_coarsest_scale_that_covers_the_target(at_least, decoded):
    rec = frame_record("cam", 0, 0, CT_JPEG, contract.encode_jpeg(_photo()))
    frame = contract.decode_frame(rec.key, rec.value, rec.headers)
    assert contract.decode_image(frame, at_least=at_least).shape == (*decoded, 3)
    png = frame_record("cam", 0, 0, CT_PNG, contract.encode_png(_photo()))
    png_frame = contract.decode_frame(png.key, png.value, png.headers)
    assert contract.decode_image(png_frame, at_least=at_least).shape == (240, 320, 3)


def test_scaled_jpeg_decode_looks_like_the_full_decode_shrunk():
    rgb = _photo()
    rec = frame_record("cam", 0, 0, CT_JPEG, contract.encode_jpeg(rgb))
    got = as_array(decode_record(rec.key, rec.value, rec.headers, image_size=112).data)
    full = as_array(decode_record(rec.key, rec.value, rec.headers).data)
    want = cv2.resize(full, (112, 112), interpolation=cv2.INTER_AREA)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == (112, 112, 3) and diff.mean() < 2.0, diff.mean()


def test_resize_rgb_filters_by_ratio():
    rgb = _photo()
    for size, interp in [((112, 112), cv2.INTER_AREA), ((120, 200), cv2.INTER_AREA),
                         ((200, 200), cv2.INTER_LINEAR), ((121, 161), cv2.INTER_LINEAR)]:  # fmt: skip
        want = cv2.resize(rgb, size[::-1], interpolation=interp)
        np.testing.assert_array_equal(resize_rgb(rgb, size), want)
