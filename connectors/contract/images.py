"""Images in the stream contract: header sniffing, size limits, JPEG/PNG decode and encode.

An image payload is refused before anything is decoded when its header declares more than
``max_pixels`` pixels: :func:`image_size` reads the declared size of a JPEG, PNG, BMP or WebP
from its header bytes alone, so a 1 kB decompression bomb never reaches the decoder.
:func:`decode_image` gives RGB ``uint8`` of shape (H, W, 3); :func:`encode_jpeg` and
:func:`encode_png` are its producers' side. See ``docs/stream-contract.md``.

Example:
    >>> import numpy as np
    >>> png = encode_png(np.zeros((2, 3, 3), np.uint8))
    >>> image_format(png), image_size(png)  # (width, height)
    ('png', (3, 2))
"""

import re

import cv2
import numpy as np

from costream.connectors.contract.content_types import CT_JPEG, CT_PNG, media_kind
from costream.connectors.contract.errors import (
    ImageSizeError,
    PayloadDecodeError,
    UnsupportedContentTypeError,
)
from costream.connectors.contract.frames import Frame

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "check_image_size",
    "decode_image",
    "encode_jpeg",
    "encode_png",
    "image_format",
    "image_size",
]

DEFAULT_MAX_PIXELS = 8192 * 8192


_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode_image(
    frame: Frame,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    at_least: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode a JPEG/PNG frame to RGB ``uint8`` of shape (H, W, 3).

    The payload must start with the signature of the declared format. The image's size is read
    from its header first (:func:`image_size`), and one declaring more than ``max_pixels`` pixels
    is refused with :class:`ImageSizeError` before anything is decoded or allocated: a 1 kB JPEG
    may declare 16000 x 16000 pixels, which the decoder would allocate (768 MB) before finding
    that the data is missing.

    ``at_least`` = (height, width): the caller shrinks the image to that size next, so a JPEG is
    decoded at the smallest of libjpeg's scales 1/2, 1/4, 1/8 that still covers it (the DCT
    drops the finer frequencies before the pixels exist: a 320 x 240 frame for a 112 x 112
    backbone decodes at 160 x 120, a third faster, and is cheaper to shrink). PNGs decode in full.
    """
    media_type = frame.content_type.media_type
    if media_kind(media_type) != "image":
        raise UnsupportedContentTypeError(
            f"Content type {media_type!r} is not an image; expected {CT_JPEG!r} or {CT_PNG!r}."
        )
    magic = _JPEG_MAGIC if media_type == CT_JPEG else _PNG_MAGIC
    if not frame.payload.startswith(magic):
        raise PayloadDecodeError(
            f"The payload does not start with the {media_type} signature "
            f"(first bytes {frame.payload[:8]!r})."
        )
    w, h = check_image_size(frame.payload, max_pixels)
    flag = cv2.IMREAD_COLOR
    if at_least is not None and media_type == CT_JPEG:
        flag = _jpeg_scale_flag(w, h, at_least)
    buf = np.frombuffer(frame.payload, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(buf, flag)
    except cv2.error as err:  # OpenCV's own limits (e.g. 2**30 pixels) raise
        raise PayloadDecodeError(
            f"OpenCV refused the {len(frame.payload)}-byte {media_type} payload: "
            f"{' '.join(str(err).split())[-200:]}"
        ) from None
    if bgr is None:
        raise PayloadDecodeError(
            f"OpenCV could not decode the {len(frame.payload)}-byte {media_type} payload."
        )
    if bgr.shape[0] * bgr.shape[1] > max_pixels:  # the header said otherwise: refuse anyway
        raise ImageSizeError(
            f"The image is {bgr.shape[1]}x{bgr.shape[0]} pixels, above the limit of {max_pixels} pixels."
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# libjpeg's DCT scales and OpenCV's flags for them, coarsest first
_JPEG_SCALES = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


def _jpeg_scale_flag(width: int, height: int, at_least: tuple[int, int]) -> int:
    """The imdecode flag of the coarsest JPEG scale whose output still covers ``at_least``."""
    want_h, want_w = at_least
    for factor, flag in _JPEG_SCALES:  # libjpeg rounds scaled sizes up
        if -(-height // factor) >= want_h and -(-width // factor) >= want_w:
            return flag
    return cv2.IMREAD_COLOR


# --- image headers: size before decoding ---------------------------------------------------

IMAGE_FORMATS = ("jpeg", "png", "bmp", "webp")
"""Formats whose size :func:`image_size` reads from the header."""

_BMP_MAGIC = b"BM"
# JPEG start-of-frame markers (ITU-T T.81 Table B.1): C4 (DHT), C8 (JPG) and CC (DAC) are not
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: no length field
_NOT_FF = re.compile(rb"[^\xff]")


def image_format(data: bytes) -> str | None:
    """The format of an encoded image by its signature (one of :data:`IMAGE_FORMATS`), or None."""
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_BMP_MAGIC):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) that an encoded JPEG, PNG, BMP or WebP image declares, from its header.

    Nothing is decoded: only the header bytes are read (for JPEG, the segments before the first
    start-of-frame marker, which is where libjpeg takes the size from). This is how
    :func:`decode_image` refuses decompression bombs before the decoder allocates.

    Raises:
        PayloadDecodeError: the format is not one of :data:`IMAGE_FORMATS`, or its header is
            truncated, malformed or declares an empty image.
    """
    fmt = image_format(data)
    if fmt is None:
        raise PayloadDecodeError(
            f"The image is not JPEG, PNG, BMP or WebP (first bytes {bytes(data[:8])!r})."
        )
    size = {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size, "webp": _webp_size}[fmt](data)
    if size is None:
        raise PayloadDecodeError(
            f"The {fmt.upper()} header is truncated or malformed, so the image size is unknown."
        )
    w, h = size
    if w <= 0 or h <= 0:
        raise PayloadDecodeError(f"The {fmt.upper()} header declares an empty {w}x{h} image.")
    return w, h


def check_image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """:func:`image_size`, refusing more than ``max_pixels`` pixels with :class:`ImageSizeError`."""
    w, h = image_size(data)
    if w * h > max_pixels:
        fmt = (image_format(data) or "image").upper()
        raise ImageSizeError(
            f"The {fmt} header declares {w}x{h} pixels, above the limit of {max_pixels} pixels, "
            f"so the image was not decoded."
        )
    return w, h


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments after SOI (T.81 B.1.1) to the first SOFn; None if there is none.

    Strict: each segment must follow the previous one directly (fill bytes 0xFF allowed). libjpeg
    skips stray bytes between segments with a warning, so a stream this walk accepts reaches the
    same SOFn in libjpeg; a stream it refuses is corrupt.
    """
    pos, n = 2, len(data)
    while pos < n:
        if data[pos] != 0xFF:
            return None
        m = _NOT_FF.search(data, pos)  # skip fill bytes (a C-speed scan, however long the run)
        if m is None:
            return None
        marker, pos = data[m.start()], m.start() + 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0x00, 0xD9, 0xDA) or pos + 2 > n:  # stuffing, EOI, SOS before any SOFn
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if length < 8 or pos + 7 > n:
                return None
            # length (2), sample precision (1), number of lines (2), samples per line (2)
            return int.from_bytes(data[pos + 5 : pos + 7], "big"), int.from_bytes(
                data[pos + 3 : pos + 5], "big"
            )
        pos += length
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """From the IHDR chunk, which must come first (PNG spec 5.6)."""
    if len(data) < 24 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """From the DIB header: 16-bit sizes in a BITMAPCOREHEADER, signed 32-bit in later ones."""
    if len(data) < 26:
        return None
    header = int.from_bytes(data[14:18], "little")
    if header == 12:
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    if header < 40:
        return None
    w = int.from_bytes(data[18:22], "little", signed=True)
    h = int.from_bytes(data[22:26], "little", signed=True)  # negative: rows stored top-down
    return w, abs(h)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """From the first chunk: VP8X (canvas), VP8L (lossless) or ``VP8 `` (lossy key frame)."""
    fourcc, body = data[12:16], data[20:30]
    if fourcc == b"VP8X" and len(body) >= 10:
        w = int.from_bytes(body[4:7], "little") + 1
        return w, int.from_bytes(body[7:10], "little") + 1
    if fourcc == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if fourcc == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        w = int.from_bytes(body[6:8], "little") & 0x3FFF
        return w, int.from_bytes(body[8:10], "little") & 0x3FFF
    return None


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Encode RGB ``uint8`` (H, W, 3) as JPEG."""
    _check_rgb(rgb)
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("OpenCV failed to JPEG-encode the image.")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode RGB ``uint8`` (H, W, 3) as PNG (lossless)."""
    _check_rgb(rgb)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV failed to PNG-encode the image.")
    return buf.tobytes()


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"Expected an RGB uint8 image of shape (H, W, 3), got {rgb.dtype} {rgb.shape}."
        )
