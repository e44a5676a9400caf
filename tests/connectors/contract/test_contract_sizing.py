"""Record sizing: truncated values, records and dead letters cut to fit."""

import hashlib

import pytest
from contract_helpers import rec

from costream.connectors import contract as C
from costream.connectors.contract import OutgoingRecord


def test_truncated_dead_letter_keeps_a_prefix_and_says_what_was_cut():
    r = rec(payload=bytes(range(256)) * 40)
    dl = C.dead_letter_record(r.key, r.value, r.headers, "too large", "decode")
    cut = C.truncated_record(dl, 100)
    assert cut.key == dl.key and cut.value == dl.value[:100]
    assert cut.headers[: len(dl.headers)] == dl.headers  # reason, stage and originals kept
    assert C.header_value(cut.headers, C.HEADER_TRUNCATED) == b"true"
    assert C.header_value(cut.headers, C.HEADER_ORIGINAL_SIZE) == b"10240"
    sha = hashlib.sha256(dl.value).hexdigest().encode()
    assert C.header_value(cut.headers, C.HEADER_ORIGINAL_SHA256) == sha
    # the marks do not depend on how much is kept (a writer sizes them first) ...
    assert C.truncated_record(dl, 0).headers == cut.headers
    # ... and cutting again keeps the first original's size and hash
    again = C.truncated_record(cut, 10)
    assert again.value == dl.value[:10] and again.headers == cut.headers
    with pytest.raises(ValueError, match="keep must be a number of bytes >= 0"):
        C.truncated_record(dl, -1)


def test_fit_record_cuts_only_what_does_not_fit():
    limit = 4096
    headers = [("costream.error", b"e" * 100)]
    for n in (0, 3900, 3995, 4000, 4100, 20_000, 300_000):
        rec = OutgoingRecord(b"k", bytes(range(256)) * (n // 256) + b"x" * (n % 256), headers)
        fit = C.fit_record(rec, limit)
        assert C.record_size(fit) <= limit
        if C.record_size(rec) <= limit:
            assert fit is rec
        else:
            assert rec.value.startswith(fit.value) and C.record_size(fit) > limit - 16
            assert C.header_value(fit.headers, C.HEADER_ORIGINAL_SIZE) == str(n).encode()
    with pytest.raises(C.RecordTooLargeError, match="key and headers alone take"):
        C.fit_record(OutgoingRecord(b"k", b"v" * 10, [("h", b"x" * limit)]), limit)


def test_fit_dead_letter_cuts_headers_then_the_key():
    limit = 4096
    rec = C.dead_letter_record(b"k" * 10_000, b"v" * 5000, [("h", b"x" * 9000)], "why", "read")
    cut = C.fit_dead_letter(rec, limit)
    h = dict(cut.headers)
    assert C.record_size(cut) <= limit and h[C.HEADER_ERROR] == b"why"
    assert h[C.HEADER_ORIGINAL_KEY_SIZE] == b"10000" and rec.key.startswith(cut.key)
    assert h[C.HEADER_DROPPED_HEADERS] == b"1 headers, 9001 bytes"
    with pytest.raises(C.RecordTooLargeError, match="Not even an empty dead letter"):
        C.fit_dead_letter(rec, 100)


def test_fits_agrees_with_record_size_at_every_limit():
    import random

    r = random.Random(5)
    for _ in range(300):
        key = None if r.random() < 0.2 else bytes(r.randrange(256) for _ in range(r.randrange(300)))
        value = bytes(r.randrange(256) for _ in range(r.choice([0, 1, 127, 128, 20_000])))
        names = ["costream.ts_ms", "é" * r.randrange(1, 70), "k"]
        headers = [
            (r.choice(names), None if r.random() < 0.1 else b"v" * r.randrange(200))
            for _ in range(r.randrange(6))
        ]
        record = OutgoingRecord(key, value, headers)
        size = C.record_size(record)
        for limit in (size - 1, size, size + 1, size + r.randrange(1, 400), 1 << 20):
            assert C.fits(record, limit) == (size <= limit), (size, limit)
