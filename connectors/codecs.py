"""Message codecs for the costream stream contract (see ``DESIGN.md``, "Stream contract").

Input records: key = stream id (UTF-8); headers ``costream.frame_index`` (decimal ASCII),
``costream.ts_ms`` (decimal ASCII, ms since epoch) and ``content-type``; value = payload, one of

* ``image/jpeg`` / ``image/png``: an encoded image, decoded to RGB ``uint8`` of shape (H, W, 3);
* ``audio/L16;rate=R;channels=1``: signed 16-bit big-endian PCM (RFC 2586), decoded to
  ``float32`` in [-1, 1) of shape (samples,);
* ``application/x-costream-features;dtype=float32;dim=D``: D little-endian float32 values,
  decoded to ``float32`` of shape (D,).

Output records carry one detection as UTF-8 JSON (:func:`encode_detection`); dead-letter records
carry the original key, value and headers plus ``costream.error`` and ``costream.stage``
(:func:`dead_letter_record`). A dead letter too large for the broker is published with its value
cut to a prefix and marked by ``costream.truncated``, ``costream.original_size`` and
``costream.original_sha256`` (:func:`truncated_record`) rather than lost.

The records that cross costream's Beam stages are ``NamedTuple`` s with real annotations (no
``from __future__ import annotations`` here, on purpose), so Beam derives a schema from each and
its YAML transforms (``Filter``, ``MapToFields``, ``Combine``, ``Sql``) take them with plain
expressions: :class:`Header` (one Kafka header), :class:`OutgoingRecord`, :class:`Detection`
(fields ``stream_id, frame_index, ts_ms, scores, labels, top_label, top_score, warm, model,
latency_ms``) and :class:`DeadLetter` (the original ``key, value, headers`` plus ``error`` and
``stage``). Their wire forms are :func:`detection_record` and :func:`dead_letter_to_record`;
this module imports no Beam, ``costream.connectors.kafka_io`` registers the coders.

Every decoding problem raises a subclass of :class:`CodecError` (itself a ``ValueError``) whose
message is one sentence saying what was wrong, so a DoFn can catch ``CodecError`` and route the
record to the dead-letter topic with ``str(err)`` as the reason. Nothing here raises anything else
for bad bytes.

Example:
    >>> rec = frame_record("cam-1", 0, 1_700_000_000_000, CT_PNG, encode_png(np.zeros((2, 2, 3), np.uint8)))
    >>> frame = decode_frame(rec.key, rec.value, rec.headers)
    >>> decode_image(frame).shape
    (2, 2, 3)
"""

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

import cv2
import numpy as np

# --- header names and content types ---------------------------------------------------------

HEADER_FRAME_INDEX = "costream.frame_index"
HEADER_TS_MS = "costream.ts_ms"
HEADER_CONTENT_TYPE = "content-type"
HEADER_ERROR = "costream.error"
HEADER_STAGE = "costream.stage"
HEADER_TRUNCATED = "costream.truncated"
HEADER_ORIGINAL_SIZE = "costream.original_size"
HEADER_ORIGINAL_SHA256 = "costream.original_sha256"

CT_JPEG = "image/jpeg"
CT_PNG = "image/png"
CT_JSON = "application/json"
AUDIO_L16 = "audio/L16"
FEATURES = "application/x-costream-features"

STAGES = ("read", "decode", "features", "inference", "write")
"""Valid values of the ``costream.stage`` dead-letter header."""

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_ERROR_CHARS = 1000

MAX_FRAME_INDEX = 2**63 - 1
"""Largest ``costream.frame_index``: detections carry it as a JSON number, which Java and Go
consumers read as a signed 64-bit integer."""
MAX_TS_MS = 253_402_300_799_999
"""Largest ``costream.ts_ms``: 9999-12-31T23:59:59.999Z, the last millisecond that ISO-8601
timestamps, Python's ``datetime`` and ``java.time`` formatting all hold (four-digit years); a
capture time beyond it is a unit mistake (microseconds or nanoseconds), not a date."""

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DECIMAL = re.compile(rb"\A(?:0|[1-9][0-9]*)\Z")


class Header(NamedTuple):
    """One Kafka record header. A plain ``(name, value)`` pair compares equal to it.

    Beam schemas have no tuple type, so headers are a list of these rows (``List[Row(key:
    str, value: bytes)]``), which unpack like the pairs kafka-python takes.
    """

    key: str
    value: bytes


Headers = Sequence[tuple[str, bytes]]


def as_headers(headers: Iterable[tuple[str, bytes]] | None) -> list[Header]:
    """``headers`` as a list of :class:`Header` (values as ``bytes``), order kept.

    Rows decoded by Beam's ``RowCoder`` come back as generated classes; rebuilding them as
    ``Header`` keeps what a stage emits cheap to pickle and equal to what it received.
    """
    return [Header(k, v if type(v) is bytes else _header_bytes(k, v)) for k, v in headers or ()]


def _header_bytes(name: str, value: object) -> bytes:
    if value is None:  # kafka-python's reading of a header without a value
        return b""
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"Header {name!r} has a {type(value).__name__} value; headers hold bytes.")


def audio_content_type(rate: int) -> str:
    """Content type of a mono L16 PCM chunk at ``rate`` Hz."""
    if not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"Audio rate must be a positive integer in Hz, got {rate!r}.")
    return f"{AUDIO_L16};rate={rate};channels=1"


def features_content_type(dim: int) -> str:
    """Content type of a float32 feature vector of length ``dim``."""
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"Feature dim must be a positive integer, got {dim!r}.")
    return f"{FEATURES};dtype=float32;dim={dim}"


# --- errors --------------------------------------------------------------------------------


class CodecError(ValueError):
    """A record does not follow the stream contract; the message is one sentence saying why."""


class InvalidKeyError(CodecError):
    """The record key (the stream id) is missing, empty or not UTF-8."""


class MissingHeaderError(CodecError):
    """A required header is absent."""


class MalformedHeaderError(CodecError):
    """A header is present but its value cannot be parsed, or it appears twice with two values."""


class UnsupportedContentTypeError(CodecError):
    """The content type (or one of its parameters) is not one the contract defines."""


class PayloadDecodeError(CodecError):
    """The payload bytes cannot be decoded as the declared content type."""


class PayloadSizeError(CodecError):
    """The payload is too large, or its size does not match what the content type declares."""


class ImageSizeError(PayloadSizeError):
    """An image's header declares more pixels than the limit; it is refused before decoding."""


class DetectionFormatError(CodecError):
    """A detection is not a valid version-1 detection JSON object."""


# --- records -------------------------------------------------------------------------------


class OutgoingRecord(NamedTuple):
    """A record to publish: key, value and headers (topic and partition chosen by the writer).

    ``headers`` may hold plain ``(name, value)`` pairs or :class:`Header` rows.
    """

    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]


@dataclass(frozen=True)
class ContentType:
    """A parsed content type: lower-cased media type plus ``;name=value`` parameters."""

    media_type: str
    params: dict[str, str]


@dataclass(frozen=True)
class Frame:
    """One validated input record; ``payload`` is still encoded (see :func:`decode_payload`)."""

    stream_id: str
    frame_index: int
    ts_ms: int
    content_type: ContentType
    payload: bytes


def parse_content_type(text: str) -> ContentType:
    """Parse ``type/subtype;a=b;c=d``; the media type is case-insensitive, values are kept."""
    parts = [p.strip() for p in text.split(";")]
    media_type = parts[0].lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", media_type):
        raise MalformedHeaderError(
            f"Header {HEADER_CONTENT_TYPE!r} is {text!r}, which is not a 'type/subtype' content type."
        )
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name or not value.strip():
            raise MalformedHeaderError(
                f"Header {HEADER_CONTENT_TYPE!r} is {text!r}; parameter {part!r} is not 'name=value'."
            )
        params[name] = value.strip()
    return ContentType(media_type, params)


def header_value(headers: Headers, name: str) -> bytes | None:
    """The value of header ``name``, or None when absent; two different values are an error."""
    found: bytes | None = None
    for key, value in headers:
        if key != name:
            continue
        if value is None or not isinstance(value, bytes | bytearray):
            raise MalformedHeaderError(f"Header {name!r} has no bytes value (got {value!r}).")
        if found is not None and bytes(value) != found:
            raise MalformedHeaderError(
                f"Header {name!r} appears twice with different values {found!r} and {bytes(value)!r}."
            )
        found = bytes(value)
    return found


def _required(headers: Headers, name: str) -> bytes:
    value = header_value(headers, name)
    if value is None:
        raise MissingHeaderError(f"Required header {name!r} is missing.")
    return value


def _decimal_header(headers: Headers, name: str, largest: int, why: str) -> int:
    """A decimal ASCII header in ``0..largest``; ``why`` says where ``largest`` comes from."""
    raw = _required(headers, name)
    if not _DECIMAL.match(raw):
        raise MalformedHeaderError(
            f"Header {name!r} is {raw[:40]!r}; expected a non-negative decimal integer in ASCII."
        )
    # compare digit counts first: int() of a 5000-digit header would itself raise ValueError
    if len(raw) > len(str(largest)) or int(raw) > largest:
        raise MalformedHeaderError(
            f"Header {name!r} is {raw[:40].decode('ascii')}{'...' if len(raw) > 40 else ''}, "
            f"above the largest allowed value {largest} ({why})."
        )
    return int(raw)


_INDEX_WHY = "2**63 - 1, the largest signed 64-bit integer"
_TS_WHY = "9999-12-31T23:59:59.999Z in ms since the epoch"


def decode_frame(
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    *,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Frame:
    """Validate one input record's key, headers and payload size; return a :class:`Frame`.

    The payload itself is not decoded (that is :func:`decode_payload`); its declared content type
    must be one of the four the contract defines, with valid parameters. ``costream.frame_index``
    must lie in ``0..MAX_FRAME_INDEX`` (2**63 - 1) and ``costream.ts_ms`` in ``0..MAX_TS_MS``
    (the end of year 9999): see those constants for why.

    Raises:
        CodecError: a subclass naming the first problem found.
    """
    if key is None or len(key) == 0:
        raise InvalidKeyError("The record has no key; the key must be the stream id in UTF-8.")
    try:
        stream_id = bytes(key).decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidKeyError(
            f"The record key {bytes(key)[:40]!r} is not valid UTF-8 ({err.reason} at byte {err.start})."
        ) from None
    if value is None:
        raise PayloadSizeError("The record has no value (a tombstone); a payload is required.")
    if len(value) > max_payload_bytes:
        raise PayloadSizeError(
            f"The payload is {len(value)} bytes, above the limit of {max_payload_bytes} bytes."
        )
    frame_index = _decimal_header(headers, HEADER_FRAME_INDEX, MAX_FRAME_INDEX, _INDEX_WHY)
    ts_ms = _decimal_header(headers, HEADER_TS_MS, MAX_TS_MS, _TS_WHY)
    raw_ct = _required(headers, HEADER_CONTENT_TYPE)
    try:
        ct_text = raw_ct.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedHeaderError(
            f"Header {HEADER_CONTENT_TYPE!r} is not ASCII ({raw_ct[:40]!r})."
        ) from None
    content_type = parse_content_type(ct_text)
    _check_content_type(content_type, ct_text)
    return Frame(stream_id, frame_index, ts_ms, content_type, bytes(value))


def _positive_int_param(ct: ContentType, text: str, name: str) -> int:
    raw = ct.params.get(name)
    if raw is None:
        raise UnsupportedContentTypeError(
            f"Content type {text!r} lacks the required parameter {name!r}."
        )
    if not re.fullmatch(r"[1-9][0-9]*", raw):
        raise UnsupportedContentTypeError(
            f"Content type {text!r} has {name}={raw!r}; expected a positive integer."
        )
    return int(raw)


def _check_content_type(ct: ContentType, text: str) -> None:
    if ct.media_type in (CT_JPEG, CT_PNG):
        return
    if ct.media_type == AUDIO_L16.lower():
        _positive_int_param(ct, text, "rate")
        channels = ct.params.get("channels", "1")
        if channels != "1":
            raise UnsupportedContentTypeError(
                f"Content type {text!r} has channels={channels}; only mono (channels=1) is supported."
            )
        return
    if ct.media_type == FEATURES:
        dtype = ct.params.get("dtype")
        if dtype != "float32":
            raise UnsupportedContentTypeError(
                f"Content type {text!r} has dtype={dtype!r}; only dtype=float32 is supported."
            )
        _positive_int_param(ct, text, "dim")
        return
    raise UnsupportedContentTypeError(
        f"Content type {text!r} is not supported; expected one of {CT_JPEG!r}, {CT_PNG!r}, "
        f"'{AUDIO_L16};rate=R;channels=1' or '{FEATURES};dtype=float32;dim=D'."
    )


# --- payloads ------------------------------------------------------------------------------


def decode_image(frame: Frame, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG frame to RGB ``uint8`` of shape (H, W, 3).

    The payload must start with the signature of the declared format. The image's size is read
    from its header first (:func:`image_size`), and one declaring more than ``max_pixels`` pixels
    is refused with :class:`ImageSizeError` before anything is decoded or allocated: a 1 kB JPEG
    may declare 16000 x 16000 pixels, which the decoder would allocate (768 MB) before finding
    that the data is missing.
    """
    media_type = frame.content_type.media_type
    if media_type not in (CT_JPEG, CT_PNG):
        raise UnsupportedContentTypeError(
            f"Content type {media_type!r} is not an image; expected {CT_JPEG!r} or {CT_PNG!r}."
        )
    magic = _JPEG_MAGIC if media_type == CT_JPEG else _PNG_MAGIC
    if not frame.payload.startswith(magic):
        raise PayloadDecodeError(
            f"The payload does not start with the {media_type} signature "
            f"(first bytes {frame.payload[:8]!r})."
        )
    check_image_size(frame.payload, max_pixels)
    buf = np.frombuffer(frame.payload, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
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


# --- image headers: size before decoding ------------------------------------------------------

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


def decode_pcm(frame: Frame, *, expected_samples: int | None = None) -> np.ndarray:
    """Decode an ``audio/L16`` chunk to ``float32`` samples in [-1, 1), shape (samples,)."""
    if frame.content_type.media_type != AUDIO_L16.lower():
        raise UnsupportedContentTypeError(
            f"Content type {frame.content_type.media_type!r} is not {AUDIO_L16!r}."
        )
    n = len(frame.payload)
    if n == 0 or n % 2:
        raise PayloadSizeError(
            f"The L16 payload is {n} bytes; expected a positive, even number of bytes (2 per sample)."
        )
    if expected_samples is not None and n // 2 != expected_samples:
        raise PayloadSizeError(
            f"The L16 chunk holds {n // 2} samples; this stream expects {expected_samples}."
        )
    return np.frombuffer(frame.payload, dtype=">i2").astype(np.float32) / 32768.0


def decode_features(frame: Frame, *, expected_dim: int | None = None) -> np.ndarray:
    """Decode a features record to ``float32`` of shape (dim,); sizes and values are checked."""
    ct = frame.content_type
    if ct.media_type != FEATURES:
        raise UnsupportedContentTypeError(f"Content type {ct.media_type!r} is not {FEATURES!r}.")
    dim = int(ct.params["dim"])
    if expected_dim is not None and dim != expected_dim:
        raise PayloadSizeError(f"The features have dim={dim}; this stream expects {expected_dim}.")
    if len(frame.payload) != 4 * dim:
        raise PayloadSizeError(
            f"The features payload is {len(frame.payload)} bytes; dtype=float32 and dim={dim} "
            f"require exactly {4 * dim} bytes."
        )
    vec = np.frombuffer(frame.payload, dtype="<f4").astype(np.float32)
    if not np.isfinite(vec).all():
        raise PayloadDecodeError(
            f"The features hold {int((~np.isfinite(vec)).sum())} non-finite values (NaN or inf)."
        )
    return vec


def decode_payload(frame: Frame) -> np.ndarray:
    """Decode any contract payload by its content type (image, PCM or features)."""
    media_type = frame.content_type.media_type
    if media_type in (CT_JPEG, CT_PNG):
        return decode_image(frame)
    if media_type == AUDIO_L16.lower():
        return decode_pcm(frame)
    return decode_features(frame)


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


def encode_l16(samples: np.ndarray) -> bytes:
    """Encode mono float samples in [-1, 1] as big-endian signed 16-bit PCM (clipped)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"Expected mono samples of shape (n,), got shape {x.shape}.")
    return (np.clip(np.round(x * 32768.0), -32768, 32767).astype(">i2")).tobytes()


def encode_features(vec: np.ndarray) -> tuple[bytes, str]:
    """Encode a (D,) vector as little-endian float32; returns (payload, content type)."""
    x = np.asarray(vec)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"Expected a non-empty feature vector of shape (D,), got {x.shape}.")
    return x.astype("<f4").tobytes(), features_content_type(int(x.shape[0]))


def frame_record(
    stream_id: str, frame_index: int, ts_ms: int, content_type: str, payload: bytes
) -> OutgoingRecord:
    """Build an input-topic record with the contract's key and headers.

    ``frame_index`` must lie in ``0..MAX_FRAME_INDEX`` and ``ts_ms`` in ``0..MAX_TS_MS``, the
    ranges :func:`decode_frame` accepts, so a record built here is never refused for them.
    """
    if not stream_id:
        raise ValueError("stream_id must be a non-empty string.")
    for name, v, largest in (
        ("frame_index", frame_index, MAX_FRAME_INDEX),
        ("ts_ms", ts_ms, MAX_TS_MS),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= largest:
            raise ValueError(f"{name} must be a whole number in 0..{largest}, got {v!r}.")
    return OutgoingRecord(
        stream_id.encode("utf-8"),
        payload,
        [
            Header(HEADER_FRAME_INDEX, str(int(frame_index)).encode("ascii")),
            Header(HEADER_TS_MS, str(int(ts_ms)).encode("ascii")),
            Header(HEADER_CONTENT_TYPE, content_type.encode("ascii")),
        ],
    )


# --- detections ----------------------------------------------------------------------------


class Detection(NamedTuple):
    """One frame's class scores: the row ``ContinualInference`` emits (a Beam schema).

    On the wire (:func:`detection_record`) it is the ``DESIGN.md`` output JSON, v=1, with
    ``top`` as ``{"label", "score"}``; as a row the two are flat fields, so a Beam YAML
    ``Filter`` can say ``keep: "warm and top_score > 0.9"``. ``scores`` and ``labels`` are
    tuples when built here and lists after Beam's ``RowCoder``; ``warm`` is False during the
    model's warm-up (fewer than n frames since the stream's start or reset); ``model`` is
    ``name@<weights sha256 prefix>``; ``latency_ms`` runs from the record's decode to this row.
    """

    stream_id: str
    frame_index: int
    ts_ms: int
    scores: Sequence[float]
    labels: Sequence[str]
    top_label: str
    top_score: float
    warm: bool
    model: str
    latency_ms: float


def make_detection(
    stream_id: str,
    frame_index: int,
    ts_ms: int,
    scores: Sequence[float],
    labels: Sequence[str],
    *,
    warm: bool,
    model: str,
    latency_ms: float,
) -> Detection:
    """Build a :class:`Detection`, choosing ``top`` as the arg-max score (first on ties)."""
    scores_t = tuple(float(s) for s in scores)
    labels_t = tuple(str(label) for label in labels)
    if not scores_t or len(scores_t) != len(labels_t):
        raise DetectionFormatError(
            f"A detection needs as many labels as scores, and at least one; got {len(scores_t)} "
            f"scores and {len(labels_t)} labels."
        )
    best = max(range(len(scores_t)), key=scores_t.__getitem__)
    det = Detection(
        stream_id,
        int(frame_index),
        int(ts_ms),
        scores_t,
        labels_t,
        labels_t[best],
        scores_t[best],
        bool(warm),
        model,
        float(latency_ms),
    )
    _validate_detection(det)
    return det


def _validate_detection(det: Detection) -> None:
    def bad(msg: str) -> DetectionFormatError:
        return DetectionFormatError(f"Invalid detection: {msg}.")

    if not isinstance(det.stream_id, str) or not det.stream_id:
        raise bad("'stream_id' must be a non-empty string")
    for name, largest in (("frame_index", MAX_FRAME_INDEX), ("ts_ms", MAX_TS_MS)):
        v = getattr(det, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= largest:
            raise bad(f"{name!r} must be a non-negative integer at most {largest}, got {v!r}")
    if len(det.scores) == 0 or len(det.scores) != len(det.labels):
        raise bad(
            f"'scores' and 'labels' must be non-empty and equally long ({len(det.scores)} vs {len(det.labels)})"
        )
    if not all(isinstance(s, float) and math.isfinite(s) for s in det.scores):
        raise bad("'scores' must all be finite numbers")
    if not all(isinstance(label, str) for label in det.labels):
        raise bad("'labels' must all be strings")
    if det.top_label not in det.labels:
        raise bad(f"'top.label' {det.top_label!r} is not one of the labels")
    if not isinstance(det.top_score, float) or not math.isfinite(det.top_score):
        raise bad("'top.score' must be a finite number")
    if not isinstance(det.warm, bool):
        raise bad("'warm' must be a boolean")
    if not isinstance(det.model, str) or not det.model:
        raise bad("'model' must be a non-empty string like 'name@sha256prefix'")
    if (
        not isinstance(det.latency_ms, float)
        or not math.isfinite(det.latency_ms)
        or det.latency_ms < 0
    ):
        raise bad("'latency_ms' must be a finite non-negative number")


def detection_to_dict(det: Detection) -> dict:
    """The JSON object of a detection, keys in contract order."""
    return {
        "v": 1,
        "stream_id": det.stream_id,
        "frame_index": det.frame_index,
        "ts_ms": det.ts_ms,
        "scores": list(det.scores),
        "labels": list(det.labels),
        "top": {"label": det.top_label, "score": det.top_score},
        "warm": det.warm,
        "model": det.model,
        "latency_ms": det.latency_ms,
    }


def encode_detection(det: Detection) -> bytes:
    """Encode a detection as compact UTF-8 JSON (validated first)."""
    _validate_detection(det)
    return json.dumps(detection_to_dict(det), separators=(",", ":"), allow_nan=False).encode()


def decode_detection(value: bytes) -> Detection:
    """Parse and validate one output-topic value; raises :class:`CodecError` subclasses."""
    try:
        obj = json.loads(bytes(value).decode("utf-8"))
    except UnicodeDecodeError as err:
        raise PayloadDecodeError(f"The detection is not valid UTF-8 ({err.reason}).") from None
    except json.JSONDecodeError as err:
        raise PayloadDecodeError(
            f"The detection is not valid JSON ({err.msg} at char {err.pos})."
        ) from None
    if not isinstance(obj, dict):
        raise DetectionFormatError(f"A detection must be a JSON object, got {type(obj).__name__}.")
    expected = {
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
    }
    missing = sorted(expected - obj.keys())
    if missing:
        raise DetectionFormatError(f"The detection lacks the field(s) {', '.join(missing)}.")
    unknown = sorted(obj.keys() - expected)
    if unknown:
        raise DetectionFormatError(f"The detection has unknown field(s) {', '.join(unknown)}.")
    if obj["v"] != 1:
        raise DetectionFormatError(f"Detection version {obj['v']!r} is not supported; expected 1.")
    top = obj["top"]
    if not isinstance(top, dict) or set(top) != {"label", "score"}:
        raise DetectionFormatError(
            "Field 'top' must be an object with exactly 'label' and 'score'."
        )
    scores, labels = obj["scores"], obj["labels"]
    if not isinstance(scores, list) or not isinstance(labels, list):
        raise DetectionFormatError("Fields 'scores' and 'labels' must be JSON arrays.")

    def num(x: object, name: str) -> float:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise DetectionFormatError(f"Field {name!r} must be a number, got {x!r}.")
        return float(x)

    det = Detection(
        stream_id=obj["stream_id"],
        frame_index=obj["frame_index"],
        ts_ms=obj["ts_ms"],
        scores=tuple(num(s, "scores") for s in scores),
        labels=tuple(labels),
        top_label=top["label"],
        top_score=num(top["score"], "top.score"),
        warm=obj["warm"],
        model=obj["model"],
        latency_ms=num(obj["latency_ms"], "latency_ms"),
    )
    _validate_detection(det)
    return det


def detection_record(det: Detection) -> OutgoingRecord:
    """An output-topic record: key = stream id, JSON value, frame index / ts / content-type headers.

    ``det`` may be any row with the fields of :class:`Detection` (one Beam's ``RowCoder``
    decoded, or a ``beam.Row``).
    """
    return OutgoingRecord(
        det.stream_id.encode("utf-8"),
        encode_detection(det),
        [
            Header(HEADER_FRAME_INDEX, str(det.frame_index).encode("ascii")),
            Header(HEADER_TS_MS, str(det.ts_ms).encode("ascii")),
            Header(HEADER_CONTENT_TYPE, _CT_JSON_BYTES),
        ],
    )


_CT_JSON_BYTES = CT_JSON.encode("ascii")


# --- dead letters --------------------------------------------------------------------------


class DeadLetter(NamedTuple):
    """A bad input as a row: the original record, why it failed and where (a Beam schema).

    ``key``, ``value`` and ``headers`` are the input record's, untouched (a record re-read to
    rebuild state keeps its ``costream.replay`` header, so writers drop its dead letter as they
    drop its detection); ``error`` is one line of at most ``MAX_ERROR_CHARS`` characters;
    ``stage`` is one of :data:`STAGES`. :func:`dead_letter_to_record` is its wire form, the
    record ``WriteDeadLetters`` publishes. Build it with :func:`dead_letter`.
    """

    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]
    error: str
    stage: str


def _reason(error: str | BaseException) -> str:
    """The one-line dead-letter reason of ``error`` (a sentence, or an exception)."""
    if isinstance(error, BaseException):
        reason = str(error) or type(error).__name__
        if not isinstance(error, CodecError):
            reason = f"{type(error).__name__}: {reason}"
    else:
        reason = error
    return " ".join(reason.split())[:MAX_ERROR_CHARS] or "unknown error"


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(
            f"Dead-letter stage {stage!r} is not valid; use one of {', '.join(STAGES)}."
        )


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    error: str | BaseException,
    stage: str,
) -> DeadLetter:
    """The :class:`DeadLetter` row of a bad input: its record as it came, plus the reason.

    The reason is what :func:`dead_letter_record` writes to ``costream.error``; ``stage`` must
    be one of :data:`STAGES`.
    """
    _check_stage(stage)
    return DeadLetter(
        None if key is None else bytes(key),
        b"" if value is None else bytes(value),
        as_headers(headers),
        _reason(error),
        stage,
    )


def dead_letter_record(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    error: str | BaseException,
    stage: str,
) -> OutgoingRecord:
    """The dead-letter record for a bad input: original key, value and headers plus the reason.

    ``costream.error`` holds the reason as one line of UTF-8 (at most ``MAX_ERROR_CHARS``
    characters); ``costream.stage`` is one of :data:`STAGES`. Earlier ``costream.error`` /
    ``costream.stage`` headers are replaced, every other header is kept in order.
    """
    _check_stage(stage)
    kept = [Header(k, bytes(v)) for k, v in headers if k not in (HEADER_ERROR, HEADER_STAGE)]
    kept += [
        Header(HEADER_ERROR, _reason(error).encode("utf-8")),
        Header(HEADER_STAGE, stage.encode("ascii")),
    ]
    return OutgoingRecord(key, b"" if value is None else bytes(value), kept)


def dead_letter_to_record(dead: DeadLetter) -> OutgoingRecord:
    """The dead-letter topic's record of a :class:`DeadLetter` row (or any row with its fields).

    Exactly :func:`dead_letter_record` of the row's key, value, headers, error and stage.
    """
    return dead_letter_record(dead.key, dead.value, dead.headers, dead.error, dead.stage)


def truncated_record(record: OutgoingRecord, keep: int) -> OutgoingRecord:
    """``record`` with its value cut to its first ``keep`` bytes, marked as truncated.

    Adds ``costream.truncated`` = ``true``, ``costream.original_size`` (the whole value's length,
    decimal ASCII) and ``costream.original_sha256`` (its SHA-256, lower-case hex), so a reader
    can tell a cut value from a whole one and match it to the original. A record already marked
    keeps its marks (they describe the first original) and is only cut further. The added
    headers do not depend on ``keep``, so a writer can size them before choosing ``keep``.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a number of bytes >= 0, got {keep!r}.")
    headers = as_headers(record.headers)
    if header_value(headers, HEADER_TRUNCATED) != b"true":
        drop = (HEADER_TRUNCATED, HEADER_ORIGINAL_SIZE, HEADER_ORIGINAL_SHA256)
        headers = [(k, v) for k, v in headers if k not in drop]
        headers += [
            Header(HEADER_TRUNCATED, b"true"),
            Header(HEADER_ORIGINAL_SIZE, str(len(record.value)).encode("ascii")),
            Header(
                HEADER_ORIGINAL_SHA256, hashlib.sha256(record.value).hexdigest().encode("ascii")
            ),
        ]
    return OutgoingRecord(record.key, bytes(record.value[:keep]), headers)
