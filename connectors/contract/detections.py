"""Detections of the stream contract: the output row and its version-1 JSON wire form.

:class:`Detection` is the row ``ContinualInference`` emits (a Beam schema: a ``NamedTuple``
with real annotations, no ``from __future__ import annotations`` here, on purpose), with
fields ``stream_id, frame_index, ts_ms, scores, labels, top_label, top_score, warm, model,
latency_ms``. :func:`make_detection` builds and validates one; :func:`encode_detection` /
:func:`decode_detection` are its UTF-8 JSON (``v`` = 1, ``top`` as ``{"label", "score"}``);
:func:`detection_record` is the output topic's record. See ``docs/stream-contract.md``.

Example:
    >>> det = make_detection("cam-1", 5, 99, [0.1, 0.9], ["bg", "person"], warm=True,
    ...                      model="co_oadtr@0123abcd", latency_ms=2.5)
    >>> det.top_label, decode_detection(encode_detection(det)) == det
    ('person', True)
"""

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from costream.connectors.contract.content_types import CT_JSON
from costream.connectors.contract.errors import DetectionFormatError, PayloadDecodeError
from costream.connectors.contract.frames import OutgoingRecord
from costream.connectors.contract.headers import (
    HEADER_CONTENT_TYPE,
    HEADER_FRAME_INDEX,
    HEADER_TS_MS,
    MAX_FRAME_INDEX,
    MAX_TS_MS,
    Header,
)

__all__ = [
    "Detection",
    "decode_detection",
    "detection_record",
    "detection_to_dict",
    "encode_detection",
    "make_detection",
    "validate_detection",
]


class Detection(NamedTuple):
    """One frame's class scores: the row ``ContinualInference`` emits (a Beam schema).

    On the wire (:func:`detection_record`) it is the output JSON of ``docs/stream-contract.md``, v=1, with
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


_MADE_MAX = 4096
_made: "OrderedDict[int, Detection]" = OrderedDict()
"""The rows :func:`make_detection` built and validated lately, by ``id``, until encoded.

So :func:`encode_detection` does not validate them again (otherwise the output path would
validate every detection twice). A :class:`Detection` is immutable all the way down (tuples of floats and
strings), so a row valid when made stays valid; holding it here keeps its ``id`` from being
reused, so ``_made.get(id(det)) is det`` is true only of that very row. Every other row (one
built elsewhere, ``_replace``-d, a copy, one Beam's coders decoded) is validated when encoded.
At most ``_MADE_MAX`` rows are held (the oldest go first: they are validated again if encoded).
"""


_LABELS: list = [None]
"""The last tuple of strings given as labels: a stepper passes the same one every frame."""


def _labels_tuple(labels: Sequence[str]) -> tuple[str, ...]:
    labels_t = tuple(map(str, labels))
    if type(labels) is tuple and all(type(x) is str for x in labels):
        _LABELS[0] = labels  # a tuple of str cannot change: taken as it is from now on
    return labels_t


def _remember(det: Detection) -> None:
    _made[id(det)] = det
    if len(_made) > _MADE_MAX:
        try:
            _made.popitem(last=False)
        except KeyError:  # another thread emptied it meanwhile
            pass


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
    """Build a :class:`Detection`, choosing ``top`` as the arg-max score (first on ties).

    The row is validated here, once (:class:`DetectionFormatError` names the bad field);
    :func:`encode_detection` and :func:`detection_record` do not validate it again.
    """
    scores_t = tuple(map(float, scores))
    labels_t = labels if labels is _LABELS[0] else _labels_tuple(labels)
    if not scores_t or len(scores_t) != len(labels_t):
        raise DetectionFormatError(
            f"A detection needs as many labels as scores, and at least one; got {len(scores_t)} "
            f"scores and {len(labels_t)} labels."
        )
    best = scores_t.index(max(scores_t))  # the first of equal maxima
    frame_index, ts_ms, latency_ms = int(frame_index), int(ts_ms), float(latency_ms)
    det = Detection(
        stream_id,
        frame_index,
        ts_ms,
        scores_t,
        labels_t,
        labels_t[best],
        scores_t[best],
        bool(warm),
        model,
        latency_ms,
    )
    # what the conversions above do not guarantee, at once (a detection is made per frame);
    # validate_detection names the field when any of it fails. A sum of finite scores is
    # finite unless it overflows, and then validate_detection finds them all finite.
    if not (
        type(stream_id) is str
        and stream_id
        and type(model) is str
        and model
        and 0 <= frame_index <= MAX_FRAME_INDEX
        and 0 <= ts_ms <= MAX_TS_MS
        and math.isfinite(sum(scores_t))
        and math.isfinite(latency_ms)
        and latency_ms >= 0
    ):
        validate_detection(det)
    _remember(det)
    return det


def validate_detection(det: Detection) -> None:
    """Raise :class:`DetectionFormatError` naming the first field of ``det`` that is invalid."""

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


_STR = json.encoder.encode_basestring_ascii  # how _JSON writes a string (ensure_ascii)
_FLOAT = float.__repr__  # how _JSON writes a finite float
_INT = int.__repr__  # ... and an int
_ARRAYS: dict[tuple[str, ...], str] = {}
"""JSON arrays of the label lists encoded lately: a stream's labels are the same every frame."""
_ARRAYS_MAX = 256


def _labels_json(labels: Sequence[str]) -> str:
    key = tuple(labels)
    text = _ARRAYS.get(key)
    if text is None:
        if len(_ARRAYS) >= _ARRAYS_MAX:
            _ARRAYS.clear()
        text = _ARRAYS[key] = "[" + ",".join(map(_STR, key)) + "]"
    return text


def encode_detection(det: Detection) -> bytes:
    """Encode a detection as compact UTF-8 JSON (validated first, unless :func:`make_detection` built it).

    The bytes are ``json.dumps(detection_to_dict(det), separators=(",", ":"), allow_nan=False)``
    (ASCII, keys in contract order), written field by field: a validated detection has only
    strings, ints, finite floats and a bool, so the generic encoder's type dispatch and the
    intermediate dict are not needed (a third of the writer's time per detection, measured).
    """
    if _made.pop(id(det), None) is not det:
        validate_detection(det)
    return (
        f'{{"v":1,"stream_id":{_STR(det.stream_id)},"frame_index":{_INT(det.frame_index)},'
        f'"ts_ms":{_INT(det.ts_ms)},"scores":[{",".join(map(_FLOAT, det.scores))}],'
        f'"labels":{_labels_json(det.labels)},"top":{{"label":{_STR(det.top_label)},'
        f'"score":{_FLOAT(det.top_score)}}},"warm":{"true" if det.warm else "false"},'
        f'"model":{_STR(det.model)},"latency_ms":{_FLOAT(det.latency_ms)}}}'
    ).encode("ascii")


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
    validate_detection(det)
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
