"""Dead letters: the original record, the reason and the stage."""

import pytest
from contract_helpers import rec, replace_header

from costream.connectors import contract as C

# --- dead letters --------------------------------------------------------------------------


def test_dead_letter_keeps_original_and_adds_reason_and_stage():
    r = rec()
    try:
        C.decode_frame(r.key, r.value, replace_header(r.headers, C.HEADER_TS_MS, b"x"))
    except C.CodecError as err:
        dl = C.dead_letter_record(r.key, r.value, r.headers, err, "decode")
    assert dl.key == r.key and dl.value == r.value
    assert dl.headers[: len(r.headers)] == r.headers
    assert C.header_value(dl.headers, C.HEADER_STAGE) == b"decode"
    assert b"costream.ts_ms" in C.header_value(dl.headers, C.HEADER_ERROR)
    # re-dead-lettering replaces the reason instead of stacking headers
    again = C.dead_letter_record(
        dl.key, dl.value, dl.headers, RuntimeError("boom\nline2"), "inference"
    )
    assert [k for k, _ in again.headers].count(C.HEADER_ERROR) == 1
    assert C.header_value(again.headers, C.HEADER_ERROR) == b"RuntimeError: boom line2"
    assert C.header_value(again.headers, C.HEADER_STAGE) == b"inference"
    with pytest.raises(ValueError, match="decode, features, inference"):
        C.dead_letter_record(r.key, r.value, r.headers, "x", "sink")


def test_dead_letter_reason_is_bounded():
    dl = C.dead_letter_record(None, None, [], "x" * 5000, "features")
    assert len(C.header_value(dl.headers, C.HEADER_ERROR)) == C.MAX_ERROR_CHARS
    assert dl.value == b""
