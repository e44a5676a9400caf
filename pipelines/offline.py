"""Run a streaming spec over a file without Kafka (``costream score``).

The spec is expanded exactly as for streaming, with ``ReadFromKafka`` replaced by the file's
records (the same records ``costream produce`` would publish) and the Kafka writes replaced by
collectors. Detections therefore come from the same transforms and the same per-stream state
update as in the streaming pipeline, and the collectors turn the rows they get (detections, dead
letters) into records with the writers' own function (``kafka_io.as_outgoing``), so what
``costream score`` returns is what the streaming job publishes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from costream.connectors import codecs
from costream.connectors.kafka_io import KafkaRecord, as_outgoing

from .spec import build_pipeline, load_spec

__all__ = ["score_records"]

_LOCK = threading.Lock()
_SINKS: dict[str, list[codecs.OutgoingRecord]] = {}


class _Collect(beam.DoFn):
    """Keeps what a Kafka writer would publish: ``as_outgoing`` of each row, as the writer."""

    def __init__(self, sink: str, format: str | None = None, key: str | None = None) -> None:
        self.sink, self.format, self.key = sink, format, key

    def process(self, element: Any) -> None:
        record = as_outgoing(element, format=self.format, key=self.key)
        with _LOCK:
            _SINKS[self.sink].append(record)


def score_records(
    spec_path: str | Path, records: Sequence[codecs.OutgoingRecord]
) -> tuple[list[codecs.OutgoingRecord], list[codecs.OutgoingRecord]]:
    """Run ``records`` through the spec in process; returns (detection records, dead letters)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    spec = load_spec(
        spec_path, defaults={"ContinualInference": {"idle_timer": False, "idle_timeout_s": None}}
    )
    kafka = [
        KafkaRecord(r.key, r.value, codecs.as_headers(r.headers), "file", 0, i, 0)
        for i, r in enumerate(records)
    ]
    run_id = str(id(kafka))
    sinks = {"WriteToKafka": f"{run_id}-out", "WriteDeadLetters": f"{run_id}-dlq"}
    with _LOCK:
        for s in sinks.values():
            _SINKS[s] = []

    class Read(beam.PTransform):
        def __init__(self, **_config: Any) -> None:
            super().__init__()

        def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
            return root | "Records" >> beam.Create(kafka, reshuffle=False)

    def collector(sink: str) -> Any:
        class Collect(beam.PTransform):
            def __init__(self, **config: Any) -> None:
                super().__init__()
                self.format, self.key = config.get("format"), config.get("key")

            def expand(self, pcoll: beam.PCollection) -> Any:
                return pcoll | "Collect" >> beam.ParDo(_Collect(sink, self.format, self.key))

        return Collect

    replace = {"ReadFromKafka": Read, **{name: collector(sink) for name, sink in sinks.items()}}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        build_pipeline(p, spec, replace=replace)
    with _LOCK:
        out, dead = (_SINKS.pop(s) for s in sinks.values())
    out.sort(
        key=lambda r: (r.key, int(codecs.header_value(r.headers, codecs.HEADER_FRAME_INDEX) or 0))
    )
    return out, dead
