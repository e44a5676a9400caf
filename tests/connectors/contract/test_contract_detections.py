"""Detections: the version-1 JSON, its validation, and the row."""

import json

import pytest
from costream.connectors import contract as C


def test_detections_refuse_indices_beyond_int64():
    with pytest.raises(C.DetectionFormatError, match="'frame_index' must be a non-negative"):
        det(frame_index=2**63)
    obj = json.loads(C.encode_detection(det()))
    obj["ts_ms"] = C.MAX_TS_MS + 1
    with pytest.raises(C.DetectionFormatError, match="'ts_ms'"):
        C.decode_detection(json.dumps(obj).encode())


# --- detections ----------------------------------------------------------------------------


def det(**kw):
    args = dict(stream_id="cam-1", frame_index=5, ts_ms=99, scores=[0.1, 0.7, 0.2], labels=["bg", "a", "b"],
                warm=True, model="co_oadtr@0123abcd", latency_ms=2.5)  # fmt: skip
    args.update(kw)
    return C.make_detection(**args)


def test_detection_json_matches_contract_and_roundtrips():
    d = det()
    obj = json.loads(C.encode_detection(d))
    assert list(obj) == [
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
    ]
    assert obj["v"] == 1 and obj["top"] == {"label": "a", "score": 0.7}
    assert C.decode_detection(C.encode_detection(d)) == d
    r = C.detection_record(d)
    assert r.key == b"cam-1" and dict(r.headers)[C.HEADER_FRAME_INDEX] == b"5"


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (b"\xff", "not valid UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"v": 1}', "lacks the field"),
        ("extra", "unknown field"),
        ("v2", "version 2"),
        ("nan", "finite"),
        ("mismatch", "equally long"),
        ("toplabel", "not one of the labels"),
        ("warm", "'warm' must be a boolean"),
        ("score_str", "must be a number"),
        ("negative_index", "non-negative integer"),
    ],
)
def test_malformed_detections(value, phrase):
    good = json.loads(C.encode_detection(det()))
    if isinstance(value, str):
        obj = dict(good)
        if value == "extra":
            obj["x"] = 1
        elif value == "v2":
            obj["v"] = 2
        elif value == "nan":
            obj["scores"] = [float("nan"), 0.5, 0.1]
        elif value == "mismatch":
            obj["labels"] = ["bg", "a"]
        elif value == "toplabel":
            obj["top"] = {"label": "zzz", "score": 0.7}
        elif value == "warm":
            obj["warm"] = "yes"
        elif value == "score_str":
            obj["scores"] = ["0.1", 0.7, 0.2]
        elif value == "negative_index":
            obj["frame_index"] = -1
        value = json.dumps(obj).encode()
    with pytest.raises(C.CodecError, match=phrase):
        C.decode_detection(value)


def test_make_detection_refuses_bad_input():
    with pytest.raises(C.DetectionFormatError, match="as many labels as scores"):
        det(labels=["a"])
    with pytest.raises(C.DetectionFormatError, match="finite"):
        det(scores=[0.1, float("inf"), 0.0])
