"""Frame records: headers, content types and the typed error of every malformed input."""

import numpy as np
import pytest
from contract_helpers import rec, replace_header, rgb

from costream.connectors import contract as C


def test_content_type_parsing_is_case_insensitive_on_type_and_keeps_params():
    ct = C.parse_content_type("Audio/L16; rate=8000 ;channels=1")
    assert ct == C.ContentType("audio/l16", {"rate": "8000", "channels": "1"})


# --- every malformed input class yields its typed error -----------------------------------


@pytest.mark.parametrize(
    ("mutate", "error", "phrase"),
    [
        (lambda k, v, h: (None, v, h), C.InvalidKeyError, "no key"),
        (lambda k, v, h: (b"", v, h), C.InvalidKeyError, "no key"),
        (lambda k, v, h: (b"\xff\xfe", v, h), C.InvalidKeyError, "not valid UTF-8"),
        (lambda k, v, h: (k, None, h), C.PayloadSizeError, "tombstone"),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, None)),
            C.MissingHeaderError,
            "costream.frame_index",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_TS_MS, None)),
            C.MissingHeaderError,
            "costream.ts_ms",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, None)),
            C.MissingHeaderError,
            "content-type",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, b"abc")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, b"-1")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_FRAME_INDEX, b"007")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_TS_MS, b"1.5")),
            C.MalformedHeaderError,
            "decimal",
        ),
        (
            lambda k, v, h: (k, v, h + [(C.HEADER_FRAME_INDEX, b"4")]),
            C.MalformedHeaderError,
            "appears twice",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(h, C.HEADER_TS_MS, None) + [(C.HEADER_TS_MS, None)],
            ),
            C.MalformedHeaderError,
            "no bytes value",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"jpeg")),
            C.MalformedHeaderError,
            "type/subtype",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"image/png;q")),
            C.MalformedHeaderError,
            "name=value",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, "image/pñg".encode())),
            C.MalformedHeaderError,
            "not ASCII",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"image/gif")),
            C.UnsupportedContentTypeError,
            "not supported",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(h, C.HEADER_CONTENT_TYPE, b"audio/L16;channels=1"),
            ),
            C.UnsupportedContentTypeError,
            "'rate'",
        ),
        (
            lambda k, v, h: (k, v, replace_header(h, C.HEADER_CONTENT_TYPE, b"audio/L16;rate=0")),
            C.UnsupportedContentTypeError,
            "positive integer",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(h, C.HEADER_CONTENT_TYPE, b"audio/L16;rate=16000;channels=2"),
            ),
            C.UnsupportedContentTypeError,
            "mono",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(
                    h, C.HEADER_CONTENT_TYPE, b"application/x-costream-features;dtype=float64;dim=4"
                ),
            ),
            C.UnsupportedContentTypeError,
            "float32",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                replace_header(
                    h, C.HEADER_CONTENT_TYPE, b"application/x-costream-features;dtype=float32"
                ),
            ),
            C.UnsupportedContentTypeError,
            "'dim'",
        ),
    ],
)
def test_malformed_records_raise_typed_errors(mutate, error, phrase):
    r = rec()
    key, value, headers = mutate(r.key, r.value, list(r.headers))
    with pytest.raises(error) as info:
        C.decode_frame(key, value, headers)
    assert isinstance(info.value, C.CodecError) and isinstance(info.value, ValueError)
    msg = str(info.value)
    assert phrase in msg
    assert msg[0].isupper() and msg.endswith("."), msg  # one sentence


def test_oversized_payload_is_a_size_error():
    r = rec(payload=b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    with pytest.raises(C.PayloadSizeError, match="above the limit of 50 bytes"):
        C.decode_frame(r.key, r.value, r.headers, max_payload_bytes=50)


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        (C.HEADER_FRAME_INDEX, b"9223372036854775807", True),  # 2**63 - 1
        (C.HEADER_FRAME_INDEX, b"9223372036854775808", False),  # 2**63
        (C.HEADER_FRAME_INDEX, b"1" + b"0" * 5000, False),  # beyond int()'s digit limit
        (C.HEADER_TS_MS, b"0", True),
        (C.HEADER_TS_MS, b"253402300799999", True),  # 9999-12-31T23:59:59.999Z
        (C.HEADER_TS_MS, b"253402300800000", False),  # year 10000
        (C.HEADER_TS_MS, b"1700000000000000000", False),  # nanoseconds by mistake
    ],
)
def test_header_ranges(name, value, ok):
    r = rec()
    headers = replace_header(r.headers, name, value)
    if ok:
        frame = C.decode_frame(r.key, r.value, headers)
        assert getattr(frame, "frame_index" if name == C.HEADER_FRAME_INDEX else "ts_ms") == int(
            value
        )
        return
    with pytest.raises(C.MalformedHeaderError) as info:
        C.decode_frame(r.key, r.value, headers)
    msg = str(info.value)
    assert f"Header {name!r}" in msg and "above the largest allowed value" in msg
    assert ("2**63 - 1" if name == C.HEADER_FRAME_INDEX else "9999-12-31") in msg
    assert len(msg) < 300 and msg.endswith("."), msg
    dl = C.dead_letter_record(r.key, r.value, headers, info.value, "decode")
    assert b"above the largest allowed value" in dict(dl.headers)[C.HEADER_ERROR]


def test_frame_record_refuses_what_decode_refuses():
    png = C.encode_png(rgb())
    for index, ts in ((2**63, 0), (-1, 0), (0, C.MAX_TS_MS + 1), (0, -1), (True, 0), (1.5, 0)):
        with pytest.raises(ValueError, match="must be a whole number in 0"):
            C.frame_record("s", index, ts, C.CT_PNG, png)
    r = C.frame_record("s", C.MAX_FRAME_INDEX, C.MAX_TS_MS, C.CT_PNG, png)
    frame = C.decode_frame(r.key, r.value, r.headers)
    assert (frame.frame_index, frame.ts_ms) == (2**63 - 1, 253_402_300_799_999)
    assert C.frame_record("s", np.int64(3), 0, C.CT_PNG, png).headers[0][1] == b"3"


# --- parsed content types are cached (issue 15) ----------------------------------------------


def test_parsed_content_types_are_cached_but_every_frame_gets_its_own():
    from costream.connectors.contract import content_types

    text = "application/x-costream-features;dtype=float32;dim=4"
    content_types._parse_checked.cache_clear()
    a, kind = content_types.parse_checked_content_type(text)
    b, _ = content_types.parse_checked_content_type(text)
    assert kind == "features" and a == b == C.parse_content_type(text)
    assert content_types._parse_checked.cache_info().hits == 1
    a.params["dim"] = "9"  # a caller that changes its copy changes no one else's
    assert content_types.parse_checked_content_type(text)[0].params["dim"] == "4"
    payload, ct = C.encode_features(np.ones(4))
    rec = C.frame_record("s", 0, 0, ct, payload)
    f1 = C.decode_frame(rec.key, rec.value, rec.headers)
    f2 = C.decode_frame(rec.key, rec.value, rec.headers)
    assert f1 == f2 and f1.content_type.params is not f2.content_type.params


def test_a_bad_content_type_is_refused_every_time_not_cached():
    from costream.connectors.contract import content_types

    for _ in range(2):
        with pytest.raises(C.UnsupportedContentTypeError, match="dtype=float32"):
            content_types.parse_checked_content_type("application/x-costream-features;dim=4")
        with pytest.raises(C.MalformedHeaderError, match="not a 'type/subtype'"):
            content_types.parse_checked_content_type("nonsense")


def test_a_replayed_record_is_known_by_its_header_wherever_it_is():
    from costream.connectors.contract import REPLAY_HEADER, Header, is_replay

    plain = [Header("costream.frame_index", b"1"), ("content-type", b"x")]
    assert not is_replay(plain) and not is_replay([])
    assert is_replay([*plain, Header(REPLAY_HEADER, b"1")])
    assert is_replay([(REPLAY_HEADER, b""), *plain])  # any value, any position
    assert not is_replay([("costream.replayed", b"1"), ("Costream.Replay", b"1")])
