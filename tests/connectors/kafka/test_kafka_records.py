"""KafkaRecord and OutgoingRecord coders: roundtrips and registration."""

import apache_beam as beam
import pytest

from costream.connectors import contract
from costream.connectors.contract import OutgoingRecord
from costream.connectors.kafka import KafkaRecord, OutgoingRecordCoder

pytestmark = pytest.mark.integration


def test_record_coders_roundtrip_and_are_registered():
    # KafkaRecord is a Beam row (RowCoder, benchmarks/bench_rows.py), so its headers are rows
    rec = KafkaRecord(
        None,
        b"\x00v",
        [contract.Header("a", b""), contract.Header("b", b"\xff")],
        "topic",
        3,
        2**40,
        1_700_000_000_000,
    )
    coder = beam.coders.registry.get_coder(KafkaRecord)
    assert isinstance(coder, beam.coders.RowCoder) and coder.is_deterministic()
    assert coder.decode(coder.encode(rec)) == rec
    out = OutgoingRecord(b"k", b"", [])
    assert (
        beam.coders.registry.get_coder(OutgoingRecord).decode(OutgoingRecordCoder().encode(out))
        == out
    )
