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


def test_make_detection_refuses_exactly_what_validate_detection_refuses():
    """Its checks at once agree with the field-by-field validation, edge cases included."""
    import random

    rnd = random.Random(7)
    big = 1.7976931348623157e308
    cases = dict(
        stream_id=["cam", "", "é"],
        frame_index=[0, -1, C.MAX_FRAME_INDEX, C.MAX_FRAME_INDEX + 1],
        ts_ms=[0, -1, C.MAX_TS_MS, C.MAX_TS_MS + 1],
        scores=[[0.1, 0.9], [float("nan"), 0.1], [float("inf"), float("-inf")], [big, big],
                [-big, big], [0.5, 0.5]],
        model=["m@ab", ""],
        latency_ms=[0.0, -0.5, float("inf"), float("nan"), 3.5],
    )  # fmt: skip
    for _ in range(400):
        kw = {k: rnd.choice(v) for k, v in cases.items()}
        try:
            d = det(labels=["bg", "a"], **kw)
        except C.DetectionFormatError:
            made = None
        else:
            made = d
        ref = C.Detection(kw["stream_id"], kw["frame_index"], kw["ts_ms"], tuple(kw["scores"]),
                          ("bg", "a"), "bg", kw["scores"][0], True, kw["model"],
                          kw["latency_ms"])  # fmt: skip
        try:
            C.validate_detection(ref)
        except C.DetectionFormatError:
            assert made is None, kw
        else:
            assert made is not None, kw
            assert made.top_label == ("a" if kw["scores"][1] > kw["scores"][0] else "bg")


# --- validated once (issue 15): what make_detection built is not validated again -------------


def reference_bytes(d):
    """The wire bytes as encode_detection wrote them before the fast path."""
    return json.dumps(C.detection_to_dict(d), separators=(",", ":"), allow_nan=False).encode()


def test_a_made_detection_encodes_to_the_same_bytes_and_is_a_plain_detection():
    d = det(scores=[0.1, 0.25, 1e-7], labels=["bg", "é", "b"])
    assert type(d) is C.Detection
    assert C.encode_detection(d) == reference_bytes(d)
    assert C.detection_record(d).value == reference_bytes(d)


def test_the_field_by_field_encoding_is_the_generic_encoders_bytes():
    import random

    rnd = random.Random(15)
    odd = ['a"b', "back\\slash", "tab\tnew\nline", "\x00\x1f", "é", "日本", "\U0001f600", "</x>"]
    floats = [0.0, -0.0, 1e-300, 5e-324, 1e16, 1.7976931348623157e308, 0.1, 1 / 3, 123456789.0]
    for _ in range(300):
        n = rnd.randint(1, 8)
        labels = [rnd.choice(odd) + str(k) for k in range(n)]
        scores = [rnd.choice(floats) if rnd.random() < 0.3 else rnd.random() for _ in range(n)]
        d = det(stream_id=rnd.choice(odd) * rnd.randint(1, 3), frame_index=rnd.randint(0, 2**62),
                ts_ms=rnd.randint(0, 2**40), scores=scores, labels=labels, warm=rnd.random() < 0.5,
                model=rnd.choice(odd) + "@ab", latency_ms=rnd.choice(floats + [rnd.random()]))  # fmt: skip
        assert C.encode_detection(d) == reference_bytes(d)
        as_lists = C.Detection(*d)._replace(scores=list(d.scores), labels=list(d.labels))
        assert C.encode_detection(as_lists) == reference_bytes(d)  # RowCoder's lists


@pytest.fixture
def validations(monkeypatch):
    """The rows validate_detection is called with from now on."""
    from costream.connectors.contract import detections

    calls = []
    real = detections.validate_detection
    monkeypatch.setattr(detections, "validate_detection", lambda x: calls.append(x) or real(x))
    return calls


def test_validation_is_skipped_only_for_the_rows_make_detection_built(validations):
    with pytest.raises(C.DetectionFormatError, match="'stream_id'"):
        det(stream_id="")  # make_detection checks the row it builds; a bad one: named field
    assert len(validations) == 1
    validations.clear()
    d = det()
    assert validations == []  # a valid one passes its checks at once
    C.detection_record(d)
    assert validations == []  # and encoding it does not again
    C.encode_detection(d)  # once encoded, it is forgotten: a second encoding validates
    assert len(validations) == 1 and validations[0] is d
    twin = C.Detection(*det())
    validations.clear()
    C.detection_record(twin)  # equal to a made row, but not that row
    assert len(validations) == 1 and validations[0] is twin


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda d: d._replace(stream_id=""), "'stream_id'"),
        (lambda d: d._replace(top_label="zzz"), "not one of the labels"),
        (lambda d: C.Detection._make([*d][:9] + [-1.0]), "'latency_ms'"),
        (lambda d: C.Detection(*d)._replace(frame_index=-1), "'frame_index'"),
    ],
)
def test_a_changed_or_foreign_row_is_still_validated(change, phrase):
    d = det()
    bad = change(d)
    with pytest.raises(C.DetectionFormatError, match=phrase):
        C.encode_detection(bad)
    with pytest.raises(C.DetectionFormatError, match=phrase):
        C.detection_record(bad)
    assert C.encode_detection(d) == reference_bytes(d)


def test_copies_and_rows_beyond_the_remembered_ones_are_validated(validations):
    import copy
    import pickle

    from costream.connectors.contract import detections

    d = det()
    validations.clear()
    for other in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d), C.Detection(*d)):
        assert C.encode_detection(other) == reference_bytes(d)
    assert len(validations) == 3
    first = det(frame_index=0)
    rest = [det(frame_index=i) for i in range(1, detections._MADE_MAX + 1)]
    assert len(detections._made) <= detections._MADE_MAX
    validations.clear()
    C.encode_detection(first)  # the oldest was forgotten, so it is validated again
    C.encode_detection(rest[-1])
    assert validations == [first]


def test_labels_are_strings_however_they_are_given_and_however_often():
    """A stepper's labels tuple is taken as it is after the first frame; anything else is converted."""

    def labels_of(labels):
        d = C.make_detection("s", 0, 0, [0.5, 0.5], labels, warm=True, model="m@1", latency_ms=0)
        return d.labels

    fixed = ("bg", "a")
    assert labels_of(fixed) == fixed and labels_of(fixed) is fixed  # the second time as it is
    assert labels_of(["bg", "a"]) == ("bg", "a")  # a list: a tuple of it
    assert labels_of((0, 1)) == ("0", "1") and labels_of((0, 1)) == ("0", "1")  # never cached
    mutable = ["x", "y"]
    assert labels_of(mutable) == ("x", "y")
    mutable[0] = "z"
    assert labels_of(mutable) == ("z", "y")
    assert labels_of(fixed) is fixed
