"""Image sizes from headers, and decompression bombs refused before decoding (issue 11)."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from costream.connectors import contract as C
from costream.connectors import media


def rgb(h=16, w=16):
    return np.zeros((h, w, 3), np.uint8)


def jpeg_bomb(w=16000, h=16000, *, progressive=False, prefix=b""):
    """A 16x16 JPEG (a few hundred bytes) whose frame header (SOF0/SOF2) claims w x h pixels.

    ``prefix`` is inserted right after SOI (extra segments or fill bytes before the SOF).
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, 90]
    if progressive:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, buf = cv2.imencode(".jpg", rgb(), params)
    assert ok
    data = bytearray(buf.tobytes())
    i = 2  # walk the segments after SOI to the SOF
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 7] = h.to_bytes(2, "big")  # number of lines
    data[i + 7 : i + 9] = w.to_bytes(2, "big")  # samples per line
    return bytes(data[:2] + prefix + data[2:])


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(w=16000, h=16000, color_type=2, depth=8):
    """A PNG whose IHDR claims w x h, with a small zlib stream of zero rows as its IDAT."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * w) * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bmp_rle8_bomb(w=16000, h=16000):
    """An 8-bit RLE BMP (BITMAPINFOHEADER) claiming w x h: end-of-bitmap right away."""
    palette = b"\0\0\0\0" * 256
    pixels = b"\x00\x01"  # RLE8 end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    )


def webp_vp8x(w, h):
    """A WebP file header with a VP8X chunk declaring a w x h canvas (no image data)."""
    body = b"\0\0\0\0" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + b"VP8X" + b"\x0a\0\0\0" + body


def webp_vp8l_bomb(w=16000, h=16000):
    """A small lossless WebP of 16x16 pixels whose header claims w x h (at most 16384 each)."""
    ok, buf = cv2.imencode(".webp", rgb(), [cv2.IMWRITE_WEBP_QUALITY, 101])
    data = bytearray(buf.tobytes())
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)
    data[21:25] = bits.to_bytes(4, "little")
    return bytes(data)


def frame(ct, payload):
    r = C.frame_record("cam-1", 0, 0, ct, payload)
    return C.decode_frame(r.key, r.value, r.headers)


# --- sizes of real images ---------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp"])
def test_image_size_of_encoded_images(ext):
    variant = {".webp": [cv2.IMWRITE_WEBP_QUALITY, 101], ".jpg": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]}
    for params in ([], variant.get(ext, [])):  # lossy and lossless WebP, baseline and progressive
        ok, buf = cv2.imencode(ext, rgb(30, 50), params)
        assert ok and C.image_size(buf.tobytes()) == (50, 30)


def test_image_size_of_crafted_headers():
    assert C.image_size(webp_vp8x(16384, 3)) == (16384, 3)
    assert C.image_size(bmp_rle8_bomb(7, -9)) == (7, 9)  # negative height: top-down rows
    core = b"BM" + b"\0" * 12 + struct.pack("<IHHHH", 12, 640, 480, 1, 24)
    assert C.image_size(core) == (640, 480)  # OS/2 BITMAPCOREHEADER: 16-bit sizes
    # APPn and COM segments and fill bytes before the SOF are walked over
    app = b"\xff\xe1" + (2 + 5000).to_bytes(2, "big") + b"\xc0" * 5000  # decoys inside
    com = b"\xff\xfe\x00\x04hi"
    assert C.image_size(jpeg_bomb(123, 45, prefix=app + com + b"\xff" * 100)) == (123, 45)


@pytest.mark.parametrize(
    ("payload", "phrase"),
    [
        (b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 20, "JPEG header is truncated or malformed"),
        (b"\xff\xd8\xff\xd9", "JPEG header is truncated or malformed"),  # EOI, no SOF
        (b"\xff\xd8\xff\xe0\x01", "JPEG header is truncated or malformed"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\0junk" + b"\xff\xc0\x00\x11", "truncated or malformed"),
        (jpeg_bomb(16, 0), "declares an empty 16x0 image"),  # DNL-defined height
        (png_bomb()[:20], "PNG header is truncated or malformed"),
        (b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a\0b") + png_bomb()[8:], "PNG header"),
        (png_bomb(0, 5), "declares an empty 0x5 image"),
        (b"GIF89a\x01\x00\x01\x00", "not JPEG, PNG, BMP or WebP"),
        (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20, "WEBP header is truncated or malformed"),
    ],
)
def test_unreadable_headers_are_decode_errors(payload, phrase):
    with pytest.raises(C.PayloadDecodeError, match=phrase) as info:
        C.image_size(payload)
    assert str(info.value).endswith(".")


# --- bombs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ct", "payload", "claim"),
    [
        (C.CT_JPEG, jpeg_bomb(), "JPEG header declares 16000x16000 pixels"),
        (C.CT_JPEG, jpeg_bomb(progressive=True), "JPEG header declares 16000x16000 pixels"),
        (C.CT_JPEG, jpeg_bomb(65500, 65500), "JPEG header declares 65500x65500 pixels"),
        (C.CT_PNG, png_bomb(), "PNG header declares 16000x16000 pixels"),
        (C.CT_PNG, png_bomb(color_type=6, depth=16), "PNG header declares 16000x16000 pixels"),
    ],
)
def test_bombs_are_refused_from_the_header(ct, payload, claim):
    assert len(payload) < 20_000
    with pytest.raises(C.ImageSizeError) as info:
        C.decode_image(frame(ct, payload))
    err = info.value
    assert isinstance(err, C.PayloadSizeError) and isinstance(err, C.CodecError)
    assert (
        str(err)
        == f"The {claim}, above the limit of 67108864 pixels, so the image was not decoded."
    )
    dl = C.dead_letter_record(b"cam-1", payload, [], err, "decode")
    assert dict(dl.headers)[C.HEADER_ERROR].decode() == str(err)


def test_opencv_errors_are_codec_errors():
    # with a limit above OpenCV's own (2**30 pixels), OpenCV refuses by raising cv2.error
    with pytest.raises(C.PayloadDecodeError, match="OpenCV refused the .* image/jpeg payload"):
        C.decode_image(frame(C.CT_JPEG, jpeg_bomb(65500, 65500)), max_pixels=2**33)


def test_pixel_limit_is_the_callers():
    payload = jpeg_bomb(100, 100)
    with pytest.raises(C.ImageSizeError, match="100x100 pixels, above the limit of 9999 pixels"):
        C.decode_image(frame(C.CT_JPEG, payload), max_pixels=9999)
    # at the limit the header passes and OpenCV decodes what data there is (libjpeg pads it)
    assert C.decode_image(frame(C.CT_JPEG, payload), max_pixels=10_000).shape == (100, 100, 3)


@pytest.mark.parametrize(
    ("name", "data", "claim"),
    [
        ("bomb.jpg", jpeg_bomb(), "JPEG header declares 16000x16000"),
        ("bomb.png", png_bomb(), "PNG header declares 16000x16000"),
        ("bomb.bmp", bmp_rle8_bomb(), "BMP header declares 16000x16000"),
        ("bomb.webp", webp_vp8l_bomb(), "WEBP header declares 16000x16000"),
    ],
)
def test_read_image_refuses_bombs_before_decoding(tmp_path, name, data, claim):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(media.MediaError, match=claim) as info:
        media.read_image(path)
    assert name in str(info.value)
    small = tmp_path / f"small{path.suffix}"
    small.write_bytes({".jpg": jpeg_bomb, ".png": png_bomb, ".bmp": bmp_rle8_bomb,
                       ".webp": webp_vp8l_bomb}[path.suffix](40, 30))  # fmt: skip
    assert media.read_image(small).shape == (30, 40, 3)
    assert media.read_image(small, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(media.MediaError, match="above the limit of 1199 pixels"):
        media.read_image(small, max_pixels=1199)


def test_read_image_refuses_unknown_formats(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"GIF89a" + b"\0" * 20)
    with pytest.raises(media.MediaError, match="not JPEG, PNG, BMP or WebP"):
        media.read_image(path)
    with pytest.raises(media.MediaError, match="Cannot read the image"):
        media.read_image(tmp_path / "missing.png")
