"""The stream contract: what costream reads from and writes to Kafka, free of Beam and torch.

One concept per module (the whole contract: ``docs/stream-contract.md``):

- :mod:`~costream.connectors.contract.headers`: header names, the :class:`Header` row, typed
  header parsing;
- :mod:`~costream.connectors.contract.content_types`: content types and the one media-type
  dispatch (:func:`media_kind`);
- :mod:`~costream.connectors.contract.frames`: the frame record a producer writes
  (:func:`frame_record`, :class:`OutgoingRecord`) and its validation (:func:`decode_frame`);
- :mod:`~costream.connectors.contract.images` and :mod:`~costream.connectors.contract.payloads`:
  payload decoding and encoding (image header sniffing and pixel limits included);
- :mod:`~costream.connectors.contract.detections`: the :class:`Detection` row and its JSON;
- :mod:`~costream.connectors.contract.dead_letters`: the :class:`DeadLetter` row, reasons and
  stages;
- :mod:`~costream.connectors.contract.sizing`: record sizes and truncation to fit the broker;
- :mod:`~costream.connectors.contract.errors`: the :class:`CodecError` family.

This package imports neither ``apache_beam`` nor ``torch`` (a test checks it), so producers,
consumers and tools can use it alone; ``costream.connectors.kafka`` registers Beam coders for
its rows.

Example:
    >>> import numpy as np
    >>> rec = frame_record("cam-1", 0, 1_700_000_000_000, CT_PNG, encode_png(np.zeros((2, 2, 3), np.uint8)))
    >>> decode_payload(decode_frame(rec.key, rec.value, rec.headers)).shape
    (2, 2, 3)
"""

from costream.connectors.contract.content_types import (
    AUDIO_L16,
    CT_JPEG,
    CT_JSON,
    CT_PNG,
    FEATURES,
    PAYLOAD_KINDS,
    ContentType,
    audio_content_type,
    check_content_type,
    features_content_type,
    media_kind,
    parse_content_type,
)
from costream.connectors.contract.dead_letters import (
    MAX_ERROR_CHARS,
    STAGES,
    DeadLetter,
    check_stage,
    dead_letter,
    dead_letter_reason,
    dead_letter_record,
    dead_letter_to_record,
)
from costream.connectors.contract.detections import (
    Detection,
    decode_detection,
    detection_record,
    detection_to_dict,
    encode_detection,
    make_detection,
    validate_detection,
)
from costream.connectors.contract.errors import (
    CodecError,
    DetectionFormatError,
    ImageSizeError,
    InvalidKeyError,
    MalformedHeaderError,
    MissingHeaderError,
    PayloadDecodeError,
    PayloadSizeError,
    UnsupportedContentTypeError,
)
from costream.connectors.contract.frames import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Frame,
    OutgoingRecord,
    decode_frame,
    frame_record,
)
from costream.connectors.contract.headers import (
    HEADER_CONTENT_TYPE,
    HEADER_DROPPED_HEADERS,
    HEADER_ERROR,
    HEADER_FRAME_INDEX,
    HEADER_ORIGINAL_KEY_SHA256,
    HEADER_ORIGINAL_KEY_SIZE,
    HEADER_ORIGINAL_SHA256,
    HEADER_ORIGINAL_SIZE,
    HEADER_SOURCE,
    HEADER_STAGE,
    HEADER_TRUNCATED,
    HEADER_TS_MS,
    MAX_FRAME_INDEX,
    MAX_TS_MS,
    REPLAY_HEADER,
    Header,
    Headers,
    as_headers,
    decimal_header,
    frame_index_of,
    header_value,
    is_replay,
    required_header,
    ts_ms_of,
)
from costream.connectors.contract.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    check_image_size,
    decode_image,
    encode_jpeg,
    encode_png,
    image_format,
    image_size,
)
from costream.connectors.contract.payloads import (
    decode_features,
    decode_payload,
    decode_pcm,
    encode_features,
    encode_l16,
)
from costream.connectors.contract.sizing import (
    DEFAULT_MAX_REQUEST_SIZE,
    RecordTooLargeError,
    fit_dead_letter,
    fit_record,
    fits,
    record_size,
    truncated_record,
)

__all__ = [
    "AUDIO_L16",
    "CT_JPEG",
    "CT_JSON",
    "CT_PNG",
    "CodecError",
    "ContentType",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_REQUEST_SIZE",
    "DeadLetter",
    "Detection",
    "DetectionFormatError",
    "FEATURES",
    "Frame",
    "HEADER_CONTENT_TYPE",
    "HEADER_DROPPED_HEADERS",
    "HEADER_ERROR",
    "HEADER_FRAME_INDEX",
    "HEADER_ORIGINAL_KEY_SHA256",
    "HEADER_ORIGINAL_KEY_SIZE",
    "HEADER_ORIGINAL_SHA256",
    "HEADER_ORIGINAL_SIZE",
    "HEADER_SOURCE",
    "HEADER_STAGE",
    "HEADER_TRUNCATED",
    "HEADER_TS_MS",
    "Header",
    "Headers",
    "IMAGE_FORMATS",
    "ImageSizeError",
    "InvalidKeyError",
    "MAX_ERROR_CHARS",
    "MAX_FRAME_INDEX",
    "MAX_TS_MS",
    "MalformedHeaderError",
    "MissingHeaderError",
    "OutgoingRecord",
    "PAYLOAD_KINDS",
    "PayloadDecodeError",
    "PayloadSizeError",
    "REPLAY_HEADER",
    "RecordTooLargeError",
    "STAGES",
    "UnsupportedContentTypeError",
    "as_headers",
    "audio_content_type",
    "check_content_type",
    "check_image_size",
    "check_stage",
    "dead_letter",
    "dead_letter_reason",
    "dead_letter_record",
    "dead_letter_to_record",
    "decimal_header",
    "decode_detection",
    "decode_features",
    "decode_frame",
    "decode_image",
    "decode_payload",
    "decode_pcm",
    "detection_record",
    "detection_to_dict",
    "encode_detection",
    "encode_features",
    "encode_jpeg",
    "encode_l16",
    "encode_png",
    "features_content_type",
    "fit_dead_letter",
    "fit_record",
    "fits",
    "frame_index_of",
    "frame_record",
    "header_value",
    "image_format",
    "image_size",
    "is_replay",
    "make_detection",
    "media_kind",
    "parse_content_type",
    "record_size",
    "required_header",
    "truncated_record",
    "ts_ms_of",
    "validate_detection",
]
