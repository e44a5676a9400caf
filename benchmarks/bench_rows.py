"""Encode/decode cost per element at each stage boundary, before and after schema'd rows.

Before costream's stage boundaries carried schema'd rows, their elements were encoded as follows;
now they are Beam rows (``RowCoder``); this script times both side by side, in one process, on
the same elements. What the runner does at a fusion break is one encode and one decode, so
``enc`` and ``dec`` are what each boundary costs per element (``coder.get_impl()``, the path
Beam's runners call).

* ``KafkaRecord``: before costream's ``KafkaRecordCoder`` (a copy is below), headers as pairs;
  after ``RowCoder``, headers as rows.
* ``DecodedFrame`` (the backbone's stateful batching): before Beam's fallback
  (``FastPrimitivesCoder`` -> pickle) of a numpy array; after ``RowCoder``, the array as an
  ``NdArray(dtype, shape, data)`` row.
* ``FeatureRecord`` (``ContinualInference``'s keyed input): before pickled (``KV[str, Any]``);
  after ``RowCoder`` (``KV[str, FeatureRecord]``).
* detection: before an ``OutgoingRecord`` holding the JSON (``OutgoingRecordCoder``); after a
  ``Detection`` row (``RowCoder``).
* dead letter: before an ``OutgoingRecord`` (``OutgoingRecordCoder``); after a ``DeadLetter``
  row (``RowCoder``).

For detections and dead letters the wire record (JSON, headers) used to be built in the stage
and is now built in the writer; ``to wire`` times that step (the same work, moved).

On the embedded runner (FnApiRunner) of the shipped specs the fusion breaks are the backbone's
stateful batching (``DecodedFrame``) and ``ContinualInference``'s keyed input (``FeatureRecord``);
the Kafka reader's output, the detections and the dead letters fuse with their consumers and are
not encoded at all. On Flink every stage boundary Beam's fuser keeps is one.

    .venv/bin/python benchmarks/bench_rows.py          # ~30 s
    .venv/bin/python benchmarks/bench_rows.py --quick  # fewer repetitions
"""

import argparse
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import Coder
from apache_beam.typehints import typehints

from costream.connectors import contract
from costream.connectors.kafka import KafkaRecord, OutgoingRecordCoder, as_outgoing
from costream.transforms.records import DecodedFrame, FeatureRecord, as_array, ndarray_row

# --- the coder KafkaRecord had before schema'd rows (connectors/kafka_io.py at 9da1489) -------------
_U32 = struct.Struct(">I")
_REC_TAIL = struct.Struct(">iqq")


def _put_bytes(out: list[bytes], b: bytes | None) -> None:
    if b is None:
        out.append(b"\xff\xff\xff\xff")
    else:
        out.append(_U32.pack(len(b)))
        out.append(b)


def _get_bytes(buf: memoryview, pos: int) -> tuple[bytes | None, int]:
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if n == 0xFFFFFFFF:
        return None, pos
    return bytes(buf[pos : pos + n]), pos + n


class KafkaRecordCoderBefore(Coder):
    """``KafkaRecordCoder`` as it was: length-prefixed fields, big-endian, headers as pairs."""

    def encode(self, value: Any) -> bytes:
        out: list[bytes] = []
        _put_bytes(out, value.key)
        _put_bytes(out, value.value)
        out.append(_U32.pack(len(value.headers)))
        for name, header in value.headers:
            _put_bytes(out, name.encode("utf-8"))
            _put_bytes(out, bytes(header))
        _put_bytes(out, value.topic.encode("utf-8"))
        out.append(_REC_TAIL.pack(value.partition, value.offset, value.timestamp_ms))
        return b"".join(out)

    def decode(self, encoded: bytes) -> Any:
        buf = memoryview(encoded)
        key, pos = _get_bytes(buf, 0)
        value, pos = _get_bytes(buf, pos)
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        headers = []
        for _ in range(count):
            name, pos = _get_bytes(buf, pos)
            header, pos = _get_bytes(buf, pos)
            headers.append(((name or b"").decode("utf-8"), header or b""))
        topic, pos = _get_bytes(buf, pos)
        partition, offset, ts = _REC_TAIL.unpack_from(buf, pos)
        return KafkaRecord(
            key, value or b"", headers, (topic or b"").decode(), partition, offset, ts
        )

    def is_deterministic(self) -> bool:
        return True


# --- elements ---------------------------------------------------------------------------------
TS = 1_700_000_000_000


def _pairs(headers: list) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers]


def features_input(dim: int = 64) -> contract.OutgoingRecord:
    payload, ct = contract.encode_features(np.random.default_rng(0).standard_normal(dim))
    return contract.frame_record("cam-1", 123_456, TS, ct, payload)


def jpeg_input() -> contract.OutgoingRecord:
    rgb = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    return contract.frame_record("cam-1", 123_456, TS, contract.CT_JPEG, contract.encode_jpeg(rgb))


def kafka_record(rec: contract.OutgoingRecord, pairs: bool) -> KafkaRecord:
    headers = _pairs(rec.headers) if pairs else contract.as_headers(rec.headers)
    return KafkaRecord(rec.key, rec.value, headers, "costream.frames", 3, 987_654, TS)


def decoded(
    rec: contract.OutgoingRecord, data: np.ndarray, kind: str, before: bool
) -> DecodedFrame:
    """Before: a numpy array and header pairs; after: an NdArray row and Header rows."""
    headers = _pairs(rec.headers) if before else contract.as_headers(rec.headers)
    array = data if before else ndarray_row(data)
    return DecodedFrame(
        "cam-1", 123_456, TS, kind, array, 0, TS + 5, rec.key, rec.value, headers, TS
    )


def feature(rec: contract.OutgoingRecord, dim: int, before: bool) -> FeatureRecord:
    headers = _pairs(rec.headers) if before else contract.as_headers(rec.headers)
    vec = np.random.default_rng(2).standard_normal(dim).astype(np.float32)
    features = vec if before else ndarray_row(vec)
    return FeatureRecord("cam-1", 123_456, TS, features, TS + 5, rec.key, rec.value, headers)


def detection(classes: int = 6) -> contract.Detection:
    scores = np.random.default_rng(3).dirichlet(np.ones(classes)).tolist()
    labels = ["Background", *(f"action_{i}" for i in range(1, classes - 1)), "Ambiguous"]
    return contract.make_detection(
        "cam-1", 123_456, TS, scores, labels, warm=True, model="co_oadtr_b1@0123456789ab",
        latency_ms=12.5,
    )  # fmt: skip


# --- timing -----------------------------------------------------------------------------------
def per_call_us(fn: Callable[[], Any], n: int, repeats: int) -> float:
    """Best of ``repeats`` means over ``n`` calls, in microseconds (a shared machine is noisy)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def coder_us(coder: Coder, element: Any, n: int, repeats: int) -> tuple[float, float, int]:
    impl = coder.get_impl()
    encoded = impl.encode(element)
    back = impl.decode(encoded)
    assert back._fields == element._fields  # the round trip keeps every field
    return (
        per_call_us(lambda: impl.encode(element), n, repeats),
        per_call_us(lambda: impl.decode(encoded), n, repeats),
        len(encoded),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    n, repeats = (2000, 3) if args.quick else (5000, 7)

    pickled = beam.coders.registry.get_coder(typehints.Any)  # Beam's fallback for untyped rows
    row = beam.coders.registry.get_coder  # RowCoder for the registered row types
    feats, jpeg = features_input(), jpeg_input()
    image = np.random.default_rng(4).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    samples = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    det = detection()
    det_record = contract.detection_record(det)
    dead = contract.dead_letter(
        feats.key, feats.value, feats.headers, "The payload is bad.", "decode"
    )
    dead_record = contract.dead_letter_to_record(dead)

    cases = [
        ("KafkaRecord", "features 64-d", KafkaRecordCoderBefore(), kafka_record(feats, True),
         row(KafkaRecord), kafka_record(feats, False)),
        ("KafkaRecord", "JPEG 320x240", KafkaRecordCoderBefore(), kafka_record(jpeg, True),
         row(KafkaRecord), kafka_record(jpeg, False)),
        ("DecodedFrame", "features 64-d", pickled, decoded(feats, samples, "features", True),
         row(DecodedFrame), decoded(feats, samples, "features", False)),
        ("DecodedFrame", "image 112x112x3", pickled, decoded(jpeg, image, "image", True),
         row(DecodedFrame), decoded(jpeg, image, "image", False)),
        ("FeatureRecord", "64-d", pickled, feature(feats, 64, True),
         row(FeatureRecord), feature(feats, 64, False)),
        ("FeatureRecord", "512-d", pickled, feature(feats, 512, True),
         row(FeatureRecord), feature(feats, 512, False)),
        ("detection", "C=6", OutgoingRecordCoder(), det_record, row(contract.Detection), det),
        ("dead letter", "features input", OutgoingRecordCoder(), dead_record,
         row(contract.DeadLetter), dead),
    ]  # fmt: skip

    print(f"us per element (best of {repeats} x {n} calls); B = encoded bytes")
    head = (
        f"{'boundary':<14} {'element':<16} | {'enc':>6} {'dec':>6} {'B':>6} | {'enc':>6} "
        f"{'dec':>6} {'B':>6} | {'after/before':>12}"
    )
    bar = head.index("|")
    print(f"{'':<{bar + 1}}{'before':^22}|{'after':^22}|")
    print(head + "\n" + "-" * len(head))
    for boundary, what, c0, e0, c1, e1 in cases:
        enc0, dec0, b0 = coder_us(c0, e0, n, repeats)
        enc1, dec1, b1 = coder_us(c1, e1, n, repeats)
        print(
            f"{boundary:<14} {what:<16} | {enc0:>6.2f} {dec0:>6.2f} {b0:>6} | {enc1:>6.2f} "
            f"{dec1:>6.2f} {b1:>6} | {(enc1 + dec1) / (enc0 + dec0):>11.2f}x"
        )

    print("\nto wire, us per element: the record the writer publishes (JSON, headers)")
    row_det = row(contract.Detection)
    det_decoded = row_det.decode(row_det.encode(det))  # what a writer after a fusion break gets

    def dead_before() -> Any:  # the stage built the record
        return contract.dead_letter_record(feats.key, feats.value, feats.headers, "Bad.", "decode")

    def dead_after() -> Any:  # the stage builds the row, the writer the record
        row_ = contract.dead_letter(feats.key, feats.value, feats.headers, "Bad.", "decode")
        return as_outgoing(row_)

    print(f"{'':<30} {'before: in the stage':>22} {'after: in the writer':>22}")
    for what, before, after in (
        ("detection", lambda: contract.detection_record(det), lambda: as_outgoing(det)),
        ("detection (RowCoder-decoded)", lambda: contract.detection_record(det),
         lambda: as_outgoing(det_decoded)),
        ("dead letter (row + record)", dead_before, dead_after),
    ):  # fmt: skip
        t0, t1 = per_call_us(before, n, repeats), per_call_us(after, n, repeats)
        print(f"{what:<30} {t0:>22.2f} {t1:>22.2f}")

    print("\narrays <-> NdArray rows, us per element (new work: made at decode and at the")
    print("backbone's output, read by the backbone and by ContinualInference)")
    print(f"{'':<30} {'ndarray_row':>22} {'as_array':>22}")
    for what, array in (("features 64-d", samples), ("features 512-d", np.zeros(512, np.float32)),
                        ("image 112x112x3", image)):  # fmt: skip
        as_row = ndarray_row(array)
        t0 = per_call_us(lambda: ndarray_row(array), n, repeats)  # noqa: B023 - called at once
        t1 = per_call_us(lambda: as_array(as_row), n, repeats)  # noqa: B023
        print(f"{what:<30} {t0:>22.2f} {t1:>22.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
