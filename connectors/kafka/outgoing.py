"""What ``WriteToKafka`` publishes for an element: :func:`as_outgoing`, rows by kind or as JSON.

Rows are told apart by their field names, not their class (Beam's ``RowCoder`` decodes rows
into classes it generates): detections and dead letters become their contract wire records,
records pass as they are, and with ``format="json"`` any schema'd row becomes one JSON object.
"""

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import apache_beam as beam
import numpy as np
from apache_beam.utils.timestamp import Timestamp

from costream.connectors.contract import (
    CT_JSON,
    HEADER_CONTENT_TYPE,
    DeadLetter,
    Detection,
    Header,
    OutgoingRecord,
    dead_letter_to_record,
    detection_record,
)
from costream.connectors.kafka.records import KafkaRecord

__all__ = ["FORMATS", "as_outgoing"]


FORMATS = ("json",)
"""Values of ``WriteToKafka(format=...)`` besides ``None`` (detections, dead letters, records)."""

_ROW_KINDS = {
    frozenset(Detection._fields): "detection",
    frozenset(DeadLetter._fields): "dead_letter",
    frozenset(KafkaRecord._fields): "kafka",
    frozenset(OutgoingRecord._fields): "record",
}
_KIND_OF_TYPE: dict[type, str | None] = {
    Detection: "detection",
    DeadLetter: "dead_letter",
    KafkaRecord: "kafka",
    OutgoingRecord: "record",
}


def _field_names(element: Any) -> tuple[str, ...] | None:
    """The field names of a schema'd row (a NamedTuple or a ``beam.Row``), else None."""
    fields = getattr(type(element), "_fields", None)
    if isinstance(fields, tuple):
        return fields
    if isinstance(element, beam.Row):
        return tuple(element.as_dict())
    return None


def _kind(element: Any) -> str | None:
    """``detection``, ``dead_letter``, ``kafka`` or ``record`` by the row's field names.

    By fields, not by class: Beam's ``RowCoder`` decodes rows into classes of its own.
    """
    cls = type(element)
    try:
        return _KIND_OF_TYPE[cls]
    except KeyError:
        pass
    fields = _field_names(element)
    kind = None if fields is None else _ROW_KINDS.get(frozenset(fields))
    if cls is not beam.Row:  # one answer per class; every beam.Row shares its class
        _KIND_OF_TYPE[cls] = kind
    return kind


def _json_value(value: Any, where: str) -> Any:
    """``value`` as JSON data (``where`` names it in errors).

    Rows and mappings become objects, sequences arrays, bytes base64 text, numpy scalars and
    arrays numbers and arrays, Beam timestamps RFC 3339 text.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Timestamp):
        return value.to_rfc3339()
    fields = _field_names(value)
    if fields is not None:
        return {name: _json_value(getattr(value, name), f"{where}.{name}") for name in fields}
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, Iterable):  # lists, tuples, Beam's iterables of grouped values
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"WriteToKafka(format='json'): field {where} holds a {type(value).__name__}, which has "
        "no JSON form; map it to a number, string, bytes, list or row first."
    )


_JSON_HEADERS = (Header(HEADER_CONTENT_TYPE, CT_JSON.encode("ascii")),)


def _json_record(element: Any, key: str | None) -> OutgoingRecord:
    """A row as one JSON object (fields in schema order), keyed by its field ``key``."""
    fields = _field_names(element)
    if fields is None and not isinstance(element, Mapping):
        raise TypeError(
            "WriteToKafka(format='json') writes schema'd rows (NamedTuples with annotations, "
            f"beam.Row) or mappings as JSON objects; got {type(element).__name__}."
        )
    obj = _json_value(element, "row")
    record_key: bytes | None = None
    if key is not None:
        if key not in obj:
            raise ValueError(
                f"WriteToKafka(key={key!r}): the row has no field {key!r}; its fields are "
                f"{', '.join(obj)}."
            )
        k = getattr(element, key) if fields is not None else element[key]
        if isinstance(k, bytes):
            record_key = k
        elif k is not None:
            record_key = (k if isinstance(k, str) else str(_json_value(k, key))).encode("utf-8")
    try:
        value = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as err:
        raise ValueError(
            f"WriteToKafka(format='json'): the row {obj!r:.200} is not JSON: {err}."
        ) from None
    return OutgoingRecord(record_key, value, list(_JSON_HEADERS))


def as_outgoing(
    element: Any,
    *,
    # Optional, not `str | None`: Beam 2.62 fails to type-check `beam.Map(as_outgoing)` on those
    format: Optional[str] = None,  # noqa: UP045
    key: Optional[str] = None,  # noqa: UP045
) -> OutgoingRecord:
    """The Kafka record ``WriteToKafka`` publishes for ``element``.

    With ``format=None``, by the element's fields (not its class, so rows Beam decoded count):

    * a detection row (:class:`~costream.connectors.contract.Detection`): the detection JSON of
      ``docs/stream-contract.md``, key = stream id, the headers of
      :func:`~costream.connectors.contract.detection_record`;
    * a dead-letter row (:class:`~costream.connectors.contract.DeadLetter`): the original key,
      value and headers plus ``costream.error`` / ``costream.stage``
      (:func:`~costream.connectors.contract.dead_letter_to_record`);
    * ``OutgoingRecord``, ``KafkaRecord`` or a plain ``(key, value)`` / ``(key, value,
      headers)`` tuple: as it is (``str`` keys are encoded as UTF-8).

    With ``format="json"``: any schema'd row (or mapping) as one compact JSON object, fields in
    schema order (nested rows as objects, bytes as base64 text), header ``content-type:
    application/json``, record key the value of field ``key`` (UTF-8 text; bytes as they are;
    no key when ``key`` is None).

    Raises:
        TypeError: an element of none of these kinds, or a bad key, value or header.
    """
    if format == "json":
        return _json_record(element, key)
    if format is not None:
        raise ValueError(
            f"format={format!r} is not valid; use None or one of {', '.join(FORMATS)}."
        )
    kind = _kind(element)
    if kind == "detection":
        return detection_record(element)
    if kind == "dead_letter":
        return dead_letter_to_record(element)
    if kind is not None:
        rec_key, value, headers = element.key, element.value, element.headers
    elif type(element) is tuple and len(element) in (2, 3):
        rec_key, value = element[0], element[1]
        headers = element[2] if len(element) == 3 else []
    elif _field_names(element) is not None:
        raise TypeError(
            f"WriteToKafka got a row with fields ({', '.join(_field_names(element) or ())}), "
            "which is not a detection, dead letter or record; give format='json' to write rows "
            "as JSON objects (and key=FIELD for the record key)."
        )
    else:
        raise TypeError(
            "WriteToKafka elements must be detection or dead-letter rows, OutgoingRecord, "
            "KafkaRecord, (key, value) or (key, value, headers), or rows with format='json'; "
            f"got {type(element).__name__}."
        )
    if isinstance(rec_key, str):
        rec_key = rec_key.encode("utf-8")
    if rec_key is not None and not isinstance(rec_key, bytes):
        raise TypeError(f"A record key must be bytes, str or None, got {type(rec_key).__name__}.")
    if not isinstance(value, bytes):
        raise TypeError(f"A record value must be bytes, got {type(value).__name__}.")
    headers = list(headers or [])
    for h in headers:
        if not (
            isinstance(h, tuple)
            and len(h) == 2
            and isinstance(h[0], str)
            and isinstance(h[1], bytes)
        ):
            raise TypeError(f"Headers must be (str, bytes) pairs, got {h!r}.")
    return OutgoingRecord(rec_key, value, headers)
