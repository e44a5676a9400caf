"""Image payloads: bad image bytes and the pixel limit, through decode_frame and decode_image."""

import pytest
from contract_helpers import rec, rgb

from costream.connectors import contract as C


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
