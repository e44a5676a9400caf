"""Payload round trips (PNG, JPEG, PCM, features) and payload size errors."""

import numpy as np
import pytest
from contract_helpers import rec, rgb

from costream.connectors import contract as C

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
