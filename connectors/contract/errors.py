"""Errors of the stream contract: what a record that does not follow it raises.

Every decoding problem raises a subclass of :class:`CodecError` (itself a ``ValueError``) whose
message is one sentence saying what was wrong, so a DoFn can catch ``CodecError`` and route the
record to the dead-letter topic with ``str(err)`` as the reason (see
:mod:`costream.connectors.contract.dead_letters`). Nothing in the contract raises anything else
for bad bytes. The contract as a whole is described in ``docs/stream-contract.md``.
"""

__all__ = [
    "CodecError",
    "DetectionFormatError",
    "ImageSizeError",
    "InvalidKeyError",
    "MalformedHeaderError",
    "MissingHeaderError",
    "PayloadDecodeError",
    "PayloadSizeError",
    "UnsupportedContentTypeError",
]


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
