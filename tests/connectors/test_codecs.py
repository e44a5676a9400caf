import hashlib
import json

import numpy as np
import pytest
from costream.connectors import codecs as C


def rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def rec(stream="cam-1", index=3, ts=1_700_000_000_123, ct=C.CT_PNG, payload=None):
    return C.frame_record(
        stream, index, ts, ct, C.encode_png(rgb()) if payload is None else payload
    )


def replace_header(headers, name, value):
    out = [(k, v) for k, v in headers if k != name]
    return out if value is None else out + [(name, value)]


# --- round trips ---------------------------------------------------------------------------


def test_png_frame_roundtrip_is_exact():
    img = rgb()
    r = C.frame_record("cam-1", 7, 1234, C.CT_PNG, C.encode_png(img))
    frame = C.decode_frame(r.key, r.value, r.headers)
    assert (frame.stream_id, frame.frame_index, frame.ts_ms) == ("cam-1", 7, 1234)
    assert frame.content_type.media_type == C.CT_PNG
    out = C.decode_payload(frame)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, img)


def test_jpeg_frame_roundtrip_is_close_and_rgb_ordered():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # pure red in RGB
    r = C.frame_record("cam-1", 0, 0, C.CT_JPEG, C.encode_jpeg(img, quality=95))
    out = C.decode_image(C.decode_frame(r.key, r.value, r.headers))
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 3


def test_pcm_roundtrip_big_endian():
    x = np.array([0.0, 0.5, -0.5, -1.0, 0.999], np.float32)
    payload = C.encode_l16(x)
    assert payload[:4] == b"\x00\x00\x40\x00"  # 0.5 * 32768 = 0x4000, big-endian
    r = C.frame_record("mic", 0, 0, C.audio_content_type(16000), payload)
    frame = C.decode_frame(r.key, r.value, r.headers)
    out = C.decode_pcm(frame, expected_samples=5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, atol=1 / 32768)


def test_features_roundtrip():
    v = np.linspace(-1, 1, 10, dtype=np.float32)
    payload, ct = C.encode_features(v)
    assert ct == "application/x-costream-features;dtype=float32;dim=10"
    r = C.frame_record("s", 1, 2, ct, payload)
    out = C.decode_payload(C.decode_frame(r.key, r.value, r.headers))
    np.testing.assert_array_equal(out, v)


def test_content_type_parsing_is_case_insensitive_on_type_and_keeps_params():
    ct = C.parse_content_type("Audio/L16; rate=8000 ;channels=1")
    assert ct == C.ContentType("audio/l16", {"rate": "8000", "channels": "1"})


# --- every malformed input class yields its typed error -----------------------------------


@pytest.mark.parametrize(
    ("mutate", "error", "phrase"),
    [
        (lambda k, v, h: (None, v, h), C.InvalidKeyError, "no key"),
        (lambda k, v, h: (b"", v, h), C.InvalidKeyError, "no key"),
        (lambda k, v, h: (b"\xff\xfe", v, h), C.InvalidKeyError, "not valid UTF-8"),
        (lambda k, v, h: (k, None, h), C.PayloadSizeError, "tombstone"),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, None)),
            C.MissingHeaderError,
            "costream.frame_index",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_TS_MS, None)),
            C.MissingHeaderError,
            "costream.ts_ms",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, None)),
            C.MissingHeaderError,
            "content-type",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, b"abc")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, b"-1")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, b"007")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_TS_MS, b"1.5")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, h + [(C.HEADER_FRAME_INDEX, b"4")]),
            C.MalformedHeaderError,
            "appears twice",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(h, C.HEADER_TS_MS, None) + [(C.HEADER_TS_MS, None)],
            ),
            C.MalformedHeaderError,
            "no bytes value",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"jpeg")),
            C.MalformedHeaderError,
            "type/subtype",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"image/png;q")),
            C.MalformedHeaderError,
            "name=value",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, "image/pñg".encode())),
            C.MalformedHeaderError,
            "not ASCII",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"image/gif")),
            C.UnsupportedContentTypeError,
            "not supported",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(h, C.HEADER_CONTENT_TYPE, b"audio/L16;channels=1"),
            ),
            C.UnsupportedContentTypeError,
            "'rate'",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"audio/L16;rate=0")),
            C.UnsupportedContentTypeError,
            "positive integer",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(h, C.HEADER_CONTENT_TYPE, b"audio/L16;rate=16000;channels=2"),
            ),
            C.UnsupportedContentTypeError,
            "mono",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(
                    h, C.HEADER_CONTENT_TYPE, b"application/x-costream-features;dtype=float64;dim=4"
                ),
            ),
            C.UnsupportedContentTypeError,
            "float32",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(
                    h, C.HEADER_CONTENT_TYPE, b"application/x-costream-features;dtype=float32"
                ),
            ),
            C.UnsupportedContentTypeError,
            "'dim'",
        ),
    ],
)
def test_malformed_records_raise_typed_errors(mutate, error, phrase):
    r = rec()
    key, value, headers = mutate(r.key, r.value, list(r.headers))
    with pytest.raises(error) as info:
        C.decode_frame(key, value, headers)
    assert isinstance(info.value, C.CodecError) and isinstance(info.value, ValueError)
    msg = str(info.value)
    assert phrase in msg
    assert msg[0].isupper() and msg.endswith("."), msg  # one sentence


def test_oversized_payload_is_a_size_error():
    r = rec(payload=b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    with pytest.raises(C.PayloadSizeError, match="above the limit of 50 bytes"):
        C.decode_frame(r.key, r.value, r.headers, max_payload_bytes=50)


def test_bad_image_bytes():
    # right signature, garbage header
    r = rec(ct=C.CT_JPEG, payload=b"\xff\xd8\xff" + b"garbage" * 10)
    with pytest.raises(C.PayloadDecodeError, match="JPEG header is truncated or malformed"):
        C.decode_image(C.decode_frame(r.key, r.value, r.headers))
    # a valid header, nothing after the frame header: the decoder itself fails
    jpeg = C.encode_jpeg(rgb())
    sof = jpeg.index(b"\xff\xc0")
    r = rec(ct=C.CT_JPEG, payload=jpeg[: sof + 2 + int.from_bytes(jpeg[sof + 2 : sof + 4], "big")])
    assert C.image_size(r.value) == (8, 6)
    with pytest.raises(C.PayloadDecodeError, match="could not decode"):
        C.decode_image(C.decode_frame(r.key, r.value, r.headers))
    # PNG bytes declared as JPEG
    r = rec(ct=C.CT_JPEG, payload=C.encode_png(rgb()))
    with pytest.raises(C.PayloadDecodeError, match="image/jpeg signature"):
        C.decode_payload(C.decode_frame(r.key, r.value, r.headers))
    # empty payload
    r = rec(ct=C.CT_PNG, payload=b"")
    with pytest.raises(C.PayloadDecodeError):
        C.decode_image(C.decode_frame(r.key, r.value, r.headers))


def test_image_pixel_limit():
    r = rec(payload=C.encode_png(rgb(40, 40)))
    with pytest.raises(C.PayloadSizeError, match="40x40 pixels"):
        C.decode_image(C.decode_frame(r.key, r.value, r.headers), max_pixels=100)
    r = rec(ct=C.CT_JPEG, payload=C.encode_jpeg(rgb(40, 40)))
    with pytest.raises(C.PayloadSizeError, match="40x40 pixels"):
        C.decode_image(C.decode_frame(r.key, r.value, r.headers), max_pixels=100)


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        (C.HEADER_FRAME_INDEX, b"9223372036854775807", True),  # 2**63 - 1
        (C.HEADER_FRAME_INDEX, b"9223372036854775808", False),  # 2**63
        (C.HEADER_FRAME_INDEX, b"1" + b"0" * 5000, False),  # beyond int()'s digit limit
        (C.HEADER_TS_MS, b"0", True),
        (C.HEADER_TS_MS, b"253402300799999", True),  # 9999-12-31T23:59:59.999Z
        (C.HEADER_TS_MS, b"253402300800000", False),  # year 10000
        (C.HEADER_TS_MS, b"1700000000000000000", False),  # nanoseconds by mistake
    ],
)
def test_header_ranges(name, value, ok):
    r = rec()
    headers = replace_header(r.headers, name, value)
    if ok:
        frame = C.decode_frame(r.key, r.value, headers)
        assert getattr(frame, "frame_index" if name == C.HEADER_FRAME_INDEX else "ts_ms") == int(
            value
        )
        return
    with pytest.raises(C.MalformedHeaderError) as info:
        C.decode_frame(r.key, r.value, headers)
    msg = str(info.value)
    assert f"Header {name!r}" in msg and "above the largest allowed value" in msg
    assert ("2**63 - 1" if name == C.HEADER_FRAME_INDEX else "9999-12-31") in msg
    assert len(msg) < 300 and msg.endswith("."), msg
    dl = C.dead_letter_record(r.key, r.value, headers, info.value, "decode")
    assert b"above the largest allowed value" in dict(dl.headers)[C.HEADER_ERROR]


def test_frame_record_refuses_what_decode_refuses():
    png = C.encode_png(rgb())
    for index, ts in ((2**63, 0), (-1, 0), (0, C.MAX_TS_MS + 1), (0, -1), (True, 0), (1.5, 0)):
        with pytest.raises(ValueError, match="must be a whole number in 0"):
            C.frame_record("s", index, ts, C.CT_PNG, png)
    r = C.frame_record("s", C.MAX_FRAME_INDEX, C.MAX_TS_MS, C.CT_PNG, png)
    frame = C.decode_frame(r.key, r.value, r.headers)
    assert (frame.frame_index, frame.ts_ms) == (2**63 - 1, 253_402_300_799_999)
    assert C.frame_record("s", np.int64(3), 0, C.CT_PNG, png).headers[0][1] == b"3"


def test_detections_refuse_indices_beyond_int64():
    with pytest.raises(C.DetectionFormatError, match="'frame_index' must be a non-negative"):
        det(frame_index=2**63)
    obj = json.loads(C.encode_detection(det()))
    obj["ts_ms"] = C.MAX_TS_MS + 1
    with pytest.raises(C.DetectionFormatError, match="'ts_ms'"):
        C.decode_detection(json.dumps(obj).encode())


def test_pcm_size_errors():
    ct = C.audio_content_type(8000)
    r = C.frame_record("m", 0, 0, ct, b"\x00\x01\x02")
    with pytest.raises(C.PayloadSizeError, match="even number"):
        C.decode_pcm(C.decode_frame(r.key, r.value, r.headers))
    r = C.frame_record("m", 0, 0, ct, b"\x00" * 8)
    with pytest.raises(C.PayloadSizeError, match="holds 4 samples; this stream expects 5"):
        C.decode_pcm(C.decode_frame(r.key, r.value, r.headers), expected_samples=5)


def test_features_size_dim_and_value_errors():
    payload, ct = C.encode_features(np.ones(4, np.float32))
    r = C.frame_record("s", 0, 0, ct, payload[:-1])
    with pytest.raises(C.PayloadSizeError, match="require exactly 16 bytes"):
        C.decode_features(C.decode_frame(r.key, r.value, r.headers))
    r = C.frame_record("s", 0, 0, ct, payload)
    with pytest.raises(C.PayloadSizeError, match="dim=4; this stream expects 8"):
        C.decode_features(C.decode_frame(r.key, r.value, r.headers), expected_dim=8)
    bad = np.array([1, np.nan, 2, np.inf], np.float32).astype("<f4").tobytes()
    r = C.frame_record("s", 0, 0, ct, bad)
    with pytest.raises(C.PayloadDecodeError, match="2 non-finite"):
        C.decode_features(C.decode_frame(r.key, r.value, r.headers))


def test_payload_decoder_refuses_other_content_types():
    r = rec()
    frame = C.decode_frame(r.key, r.value, r.headers)
    with pytest.raises(C.UnsupportedContentTypeError):
        C.decode_pcm(frame)
    with pytest.raises(C.UnsupportedContentTypeError):
        C.decode_features(frame)


# --- detections ----------------------------------------------------------------------------


def det(**kw):
    args = dict(stream_id="cam-1", frame_index=5, ts_ms=99, scores=[0.1, 0.7, 0.2], labels=["bg", "a", "b"],
                warm=True, model="co_oadtr@0123abcd", latency_ms=2.5)  # fmt: skip
    args.update(kw)
    return C.make_detection(**args)


def test_detection_json_matches_contract_and_roundtrips():
    d = det()
    obj = json.loads(C.encode_detection(d))
    assert list(obj) == [
        "v",
        "stream_id",
        "frame_index",
        "ts_ms",
        "scores",
        "labels",
        "top",
        "warm",
        "model",
        "latency_ms",
    ]
    assert obj["v"] == 1 and obj["top"] == {"label": "a", "score": 0.7}
    assert C.decode_detection(C.encode_detection(d)) == d
    r = C.detection_record(d)
    assert r.key == b"cam-1" and dict(r.headers)[C.HEADER_FRAME_INDEX] == b"5"


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (b"\xff", "not valid UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"v": 1}', "lacks the field"),
        ("extra", "unknown field"),
        ("v2", "version 2"),
        ("nan", "finite"),
        ("mismatch", "equally long"),
        ("toplabel", "not one of the labels"),
        ("warm", "'warm' must be a boolean"),
        ("score_str", "must be a number"),
        ("negative_index", "non-negative integer"),
    ],
)
def test_malformed_detections(value, phrase):
    good = json.loads(C.encode_detection(det()))
    if isinstance(value, str):
        obj = dict(good)
        if value == "extra":
            obj["x"] = 1
        elif value == "v2":
            obj["v"] = 2
        elif value == "nan":
            obj["scores"] = [float("nan"), 0.5, 0.1]
        elif value == "mismatch":
            obj["labels"] = ["bg", "a"]
        elif value == "toplabel":
            obj["top"] = {"label": "zzz", "score": 0.7}
        elif value == "warm":
            obj["warm"] = "yes"
        elif value == "score_str":
            obj["scores"] = ["0.1", 0.7, 0.2]
        elif value == "negative_index":
            obj["frame_index"] = -1
        value = json.dumps(obj).encode()
    with pytest.raises(C.CodecError, match=phrase):
        C.decode_detection(value)


def test_make_detection_refuses_bad_input():
    with pytest.raises(C.DetectionFormatError, match="as many labels as scores"):
        det(labels=["a"])
    with pytest.raises(C.DetectionFormatError, match="finite"):
        det(scores=[0.1, float("inf"), 0.0])


# --- dead letters --------------------------------------------------------------------------


def test_dead_letter_keeps_original_and_adds_reason_and_stage():
    r = rec()
    try:
        C.decode_frame(r.key, r.value, replace_header(r.headers, C.HEADER_TS_MS, b"x"))
    except C.CodecError as err:
        dl = C.dead_letter_record(r.key, r.value, r.headers, err, "decode")
    assert dl.key == r.key and dl.value == r.value
    assert dl.headers[: len(r.headers)] == r.headers
    assert C.header_value(dl.headers, C.HEADER_STAGE) == b"decode"
    assert b"costream.ts_ms" in C.header_value(dl.headers, C.HEADER_ERROR)
    # re-dead-lettering replaces the reason instead of stacking headers
    again = C.dead_letter_record(
        dl.key, dl.value, dl.headers, RuntimeError("boom\nline2"), "inference"
    )
    assert [k for k, _ in again.headers].count(C.HEADER_ERROR) == 1
    assert C.header_value(again.headers, C.HEADER_ERROR) == b"RuntimeError: boom line2"
    assert C.header_value(again.headers, C.HEADER_STAGE) == b"inference"
    with pytest.raises(ValueError, match="decode, features, inference"):
        C.dead_letter_record(r.key, r.value, r.headers, "x", "sink")


def test_dead_letter_reason_is_bounded():
    dl = C.dead_letter_record(None, None, [], "x" * 5000, "features")
    assert len(C.header_value(dl.headers, C.HEADER_ERROR)) == C.MAX_ERROR_CHARS
    assert dl.value == b""


def test_truncated_dead_letter_keeps_a_prefix_and_says_what_was_cut():
    r = rec(payload=bytes(range(256)) * 40)
    dl = C.dead_letter_record(r.key, r.value, r.headers, "too large", "decode")
    cut = C.truncated_record(dl, 100)
    assert cut.key == dl.key and cut.value == dl.value[:100]
    assert cut.headers[: len(dl.headers)] == dl.headers  # reason, stage and originals kept
    assert C.header_value(cut.headers, C.HEADER_TRUNCATED) == b"true"
    assert C.header_value(cut.headers, C.HEADER_ORIGINAL_SIZE) == b"10240"
    sha = hashlib.sha256(dl.value).hexdigest().encode()
    assert C.header_value(cut.headers, C.HEADER_ORIGINAL_SHA256) == sha
    # the marks do not depend on how much is kept (a writer sizes them first) ...
    assert C.truncated_record(dl, 0).headers == cut.headers
    # ... and cutting again keeps the first original's size and hash
    again = C.truncated_record(cut, 10)
    assert again.value == dl.value[:10] and again.headers == cut.headers
    with pytest.raises(ValueError, match="keep must be a number of bytes >= 0"):
        C.truncated_record(dl, -1)
