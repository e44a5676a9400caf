"""Helpers of the stream-contract tests: images and frame records to decode."""

import numpy as np

from costream.connectors import contract as C


def rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def rec(stream="cam-1", index=3, ts=1_700_000_000_123, ct=C.CT_PNG, payload=None):
    return C.frame_record(
        stream, index, ts, ct, C.encode_png(rgb()) if payload is None else payload
    )


def replace_header(headers, name, value):
    out = [(k, v) for k, v in headers if k != name]
    return out if value is None else out + [(name, value)]
