"""Content types of the stream contract: parsing, and the one media-type dispatch.

An input record's ``content-type`` header is one of

* ``image/jpeg`` / ``image/png``: an encoded image (kind ``"image"``);
* ``audio/L16;rate=R;channels=1``: signed 16-bit big-endian PCM, RFC 2586 (kind ``"audio"``);
* ``application/x-costream-features;dtype=float32;dim=D``: D little-endian float32 values
  (kind ``"features"``).

:func:`media_kind` is the only place that maps a media type to its payload kind; the header
check (:func:`check_content_type`), the payload decoder
(:func:`~costream.connectors.contract.payloads.decode_payload`) and ``DecodeFrames`` all ask
it. See ``docs/stream-contract.md``.

Example:
    >>> ct = parse_content_type("Audio/L16; rate=16000; channels=1")
    >>> ct.media_type, ct.params["rate"], check_content_type(ct, "Audio/L16; rate=16000")
    ('audio/l16', '16000', 'audio')
"""

import functools
import re
from dataclasses import dataclass

from costream.connectors.contract.errors import MalformedHeaderError, UnsupportedContentTypeError
from costream.connectors.contract.headers import HEADER_CONTENT_TYPE

__all__ = [
    "AUDIO_L16",
    "CT_JPEG",
    "CT_JSON",
    "CT_PNG",
    "FEATURES",
    "PAYLOAD_KINDS",
    "ContentType",
    "audio_content_type",
    "check_content_type",
    "features_content_type",
    "media_kind",
    "parse_checked_content_type",
    "parse_content_type",
]

CT_JPEG = "image/jpeg"
CT_PNG = "image/png"
CT_JSON = "application/json"
AUDIO_L16 = "audio/L16"
FEATURES = "application/x-costream-features"

PAYLOAD_KINDS = ("image", "audio", "features")
"""What a contract payload decodes to: RGB ``uint8`` (H, W, 3), ``float32`` samples, ``float32`` (D,)."""

_KIND_OF_MEDIA_TYPE = {CT_JPEG: "image", CT_PNG: "image", AUDIO_L16.lower(): "audio",
                       FEATURES: "features"}  # fmt: skip


@dataclass(frozen=True)
class ContentType:
    """A parsed content type: lower-cased media type plus ``;name=value`` parameters."""

    media_type: str
    params: dict[str, str]


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


def media_kind(media_type: str) -> str | None:
    """The payload kind (one of :data:`PAYLOAD_KINDS`) of a lower-cased media type, or None."""
    return _KIND_OF_MEDIA_TYPE.get(media_type)


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


def check_content_type(ct: ContentType, text: str) -> str:
    """The payload kind of ``ct`` once its parameters are valid; ``text`` is the header as sent.

    Raises:
        UnsupportedContentTypeError: a media type the contract does not define, or a missing
            or invalid parameter (``rate``, ``channels``, ``dtype``, ``dim``).
    """
    kind = media_kind(ct.media_type)
    if kind == "image":
        return kind
    if kind == "audio":
        _positive_int_param(ct, text, "rate")
        channels = ct.params.get("channels", "1")
        if channels != "1":
            raise UnsupportedContentTypeError(
                f"Content type {text!r} has channels={channels}; only mono (channels=1) is supported."
            )
        return kind
    if kind == "features":
        dtype = ct.params.get("dtype")
        if dtype != "float32":
            raise UnsupportedContentTypeError(
                f"Content type {text!r} has dtype={dtype!r}; only dtype=float32 is supported."
            )
        _positive_int_param(ct, text, "dim")
        return kind
    raise UnsupportedContentTypeError(
        f"Content type {text!r} is not supported; expected one of {CT_JPEG!r}, {CT_PNG!r}, "
        f"'{AUDIO_L16};rate=R;channels=1' or '{FEATURES};dtype=float32;dim=D'."
    )


@functools.lru_cache(maxsize=256)
def _parse_checked(text: str) -> tuple[str, tuple[tuple[str, str], ...], str]:
    ct = parse_content_type(text)
    return ct.media_type, tuple(ct.params.items()), check_content_type(ct, text)


def parse_checked_content_type(text: str) -> tuple[ContentType, str]:
    """:func:`parse_content_type` and :func:`check_content_type` of ``text``: (type, kind).

    The content types of a stream repeat record after record, so the parsed and checked ones
    are cached (256 distinct texts; a text that fails is parsed again each time, and raises as
    those two do). Every call returns a :class:`ContentType` of its own (``params`` is a dict).
    """
    media_type, params, kind = _parse_checked(text)
    return ContentType(media_type, dict(params)), kind
