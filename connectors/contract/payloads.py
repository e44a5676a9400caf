"""Payload decoding of the stream contract: PCM and feature vectors, and any payload by kind.

* ``audio/L16;rate=R;channels=1``: signed 16-bit big-endian PCM (RFC 2586), decoded to
  ``float32`` in [-1, 1) of shape (samples,) (:func:`decode_pcm`, :func:`encode_l16`);
* ``application/x-costream-features;dtype=float32;dim=D``: D little-endian float32 values,
  decoded to ``float32`` of shape (D,) (:func:`decode_features`, :func:`encode_features`);
* images: :mod:`costream.connectors.contract.images`.

:func:`decode_payload` decodes any of them by the kind
:func:`~costream.connectors.contract.content_types.media_kind` gives. See
``docs/stream-contract.md``.

Example:
    >>> import numpy as np
    >>> from costream.connectors.contract.frames import decode_frame, frame_record
    >>> payload, ct = encode_features(np.array([0.5, -1.0]))
    >>> rec = frame_record("s", 0, 0, ct, payload)
    >>> decode_payload(decode_frame(rec.key, rec.value, rec.headers)).tolist()
    [0.5, -1.0]
"""

import numpy as np

from costream.connectors.contract.content_types import (
    AUDIO_L16,
    FEATURES,
    features_content_type,
    media_kind,
)
from costream.connectors.contract.errors import (
    PayloadDecodeError,
    PayloadSizeError,
    UnsupportedContentTypeError,
)
from costream.connectors.contract.frames import Frame
from costream.connectors.contract.images import DEFAULT_MAX_PIXELS, decode_image

__all__ = ["decode_features", "decode_payload", "decode_pcm", "encode_features", "encode_l16"]


def decode_pcm(frame: Frame, *, expected_samples: int | None = None) -> np.ndarray:
    """Decode an ``audio/L16`` chunk to ``float32`` samples in [-1, 1), shape (samples,)."""
    if media_kind(frame.content_type.media_type) != "audio":
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
    if media_kind(ct.media_type) != "features":
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


def decode_payload(
    frame: Frame,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    at_least: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode any contract payload by its kind: image, PCM or features.

    ``max_pixels`` bounds images, ``at_least`` lets a JPEG decode at a reduced scale that still
    covers that (height, width) (:func:`~costream.connectors.contract.images.decode_image`).
    A media type of no known kind is refused by :func:`decode_features` with
    ``UnsupportedContentTypeError``.
    """
    kind = media_kind(frame.content_type.media_type)
    if kind == "image":
        return decode_image(frame, max_pixels=max_pixels, at_least=at_least)
    if kind == "audio":
        return decode_pcm(frame)
    return decode_features(frame)


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
