"""What WriteToKafka publishes for detection, dead-letter and any other rows."""

import json

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from kafka_helpers import read_topic, stream_records

from costream.connectors import contract
from costream.connectors.contract import REPLAY_HEADER, OutgoingRecord
from costream.connectors.kafka import KafkaRecord, WriteDeadLetters, WriteToKafka, as_outgoing

pytestmark = pytest.mark.integration


def _detection(stream="cam-1", i=7, warm=True):
    return contract.make_detection(
        stream, i, 1_700_000_000_000 + i, [0.25, 0.75], ["bg", "person"], warm=warm,
        model="m@0123456789ab", latency_ms=1.5,
    )  # fmt: skip


def _dead_letter(replay=False):
    original = stream_records("mic", 1, 1_700_000_000_000)[0]
    headers = [*original.headers] + ([contract.Header(REPLAY_HEADER, b"1")] if replay else [])
    return contract.dead_letter(original.key, original.value, headers, "bad  audio\n", "decode")


def _row_coded(row):
    """``row`` after Beam's RowCoder: an instance of a class Beam generated from the schema."""
    coder = beam.coders.registry.get_coder(type(row))
    back = coder.decode(coder.encode(row))
    assert type(back) is not type(row)
    return back


def test_writer_takes_detection_and_dead_letter_rows_as_the_records_of_today():
    det, dead = _detection(), _dead_letter()
    want_det = contract.detection_record(det)
    want_dead = contract.dead_letter_record(
        dead.key, dead.value, dead.headers, dead.error, "decode"
    )
    assert dict(want_dead.headers)[contract.HEADER_ERROR] == b"bad audio"
    as_row = beam.Row(**det._asdict())
    for row in (det, _row_coded(det), as_row):
        assert as_outgoing(row) == want_det
    assert contract.decode_detection(want_det.value) == det
    for row in (dead, _row_coded(dead)):
        assert as_outgoing(row) == want_dead
    rec = KafkaRecord(b"k", b"v", [contract.Header("h", b"1")], "t", 0, 1, 2)
    assert as_outgoing(_row_coded(rec)) == OutgoingRecord(b"k", b"v", [("h", b"1")])


def test_writer_writes_any_row_as_json_with_a_key_field():
    row = beam.Row(stream_id="cam-1", n=3, mean=0.5, raw=b"\x00\xff", top=beam.Row(label="a"),
                   scores=[0.25, 0.75], none=None)  # fmt: skip
    rec = as_outgoing(row, format="json", key="stream_id")
    assert rec.key == b"cam-1" and rec.headers == [("content-type", b"application/json")]
    assert json.loads(rec.value) == {
        "stream_id": "cam-1", "n": 3, "mean": 0.5, "raw": "AP8=", "top": {"label": "a"},
        "scores": [0.25, 0.75], "none": None,
    }  # fmt: skip
    assert list(json.loads(rec.value)) == list(row.as_dict())  # fields in schema order
    assert as_outgoing(row, format="json").key is None
    det = as_outgoing(_detection(), format="json", key="frame_index")
    assert det.key == b"7" and json.loads(det.value)["top_label"] == "person"
    with pytest.raises(TypeError, match=r"fields \(stream_id, n, .*give format='json'"):
        as_outgoing(row)
    with pytest.raises(ValueError, match="no field 'camera'; its fields are stream_id, n"):
        as_outgoing(row, format="json", key="camera")
    with pytest.raises(ValueError, match="is not JSON"):
        as_outgoing(beam.Row(x=float("nan")), format="json")
    with pytest.raises(TypeError, match="writes schema'd rows"):
        as_outgoing(b"raw bytes", format="json")


def test_writer_refuses_rows_it_cannot_write_at_construction():
    with pytest.raises(ValueError, match="format='xml' is not valid; use None .* 'json'"):
        WriteToKafka("h:1", "t", format="xml")
    with pytest.raises(ValueError, match="key='stream_id' names the row field .* format='json'"):
        WriteToKafka("h:1", "t", key="stream_id")
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(stream_id="a", n=1)])
    with pytest.raises(ValueError, match=r"fields \(stream_id, n\), which are not a detection"):
        _ = rows | "Auto" >> WriteToKafka("h:1", "t")
    with pytest.raises(ValueError, match="key='camera' is not a field of the input rows"):
        _ = rows | "Json" >> WriteToKafka("h:1", "t", format="json", key="camera")
    _ = rows | "Ok" >> WriteToKafka("h:1", "t", format="json", key="stream_id")
    dets = p | "Dets" >> beam.Create([_detection()])
    assert dets.element_type is contract.Detection
    _ = dets | "Detections" >> WriteToKafka("h:1", "t")


def test_write_rows_roundtrip_and_replayed_dead_letters_are_dropped(kafka_broker, kafka_topics):
    bs, t_det, t_json, t_dlq = (kafka_broker.bootstrap, kafka_topics(), kafka_topics(),
                                kafka_topics())  # fmt: skip
    dets = [_detection(i=i, warm=i > 2) for i in range(6)]
    dead, replayed = _dead_letter(), _dead_letter(replay=True)
    p = beam.Pipeline(runner=FnApiRunner())
    # Reshuffles: the writers get rows Beam's RowCoder decoded, as after any fusion break
    d = p | "Dets" >> beam.Create(dets) | "ShuffleDets" >> beam.Reshuffle()
    _ = d | "Detections" >> WriteToKafka(bs, t_det)
    _ = (d | beam.Map(lambda r: beam.Row(stream_id=r.stream_id, frame=r.frame_index,
                                          top=r.top_label))  # fmt: skip
           | "Json" >> WriteToKafka(bs, t_json, format="json", key="stream_id"))  # fmt: skip
    _ = (
        p
        | "Dead" >> beam.Create([dead, replayed])
        | "ShuffleDead" >> beam.Reshuffle()
        | WriteDeadLetters(bs, t_dlq)
    )
    result = p.run()
    result.wait_until_finish()

    def wire(records):
        return sorted((r.key, r.value, list(r.headers)) for r in records)

    assert wire(read_topic(bs, t_det, 6)) == wire(contract.detection_record(x) for x in dets)
    got = read_topic(bs, t_json, 6)
    assert sorted((r.key, json.loads(r.value)["frame"]) for r in got) == [
        (b"cam-1", i) for i in range(6)
    ]
    assert json.loads(got[0].value)["top"] == "person"
    assert wire(read_topic(bs, t_dlq, 2, timeout_s=2)) == wire(
        [contract.dead_letter_to_record(dead)]
    )
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(beam.metrics.MetricsFilter())["counters"]
    }
    assert counters["records_replay_dropped"] == 1
