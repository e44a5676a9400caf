"""Run a streaming spec over a file without Kafka (``costream score``).

The spec is expanded exactly as for streaming, with ``ReadFromKafka`` replaced by the file's
records (the same records ``costream produce`` would publish) and the Kafka writes replaced by
collectors. Detections therefore come from the same transforms and the same per-stream state
update as in the streaming pipeline, and the collectors turn the rows they get (detections, dead
letters) into records with the writers' own function (``costream.connectors.kafka.as_outgoing``), so what
``costream score`` returns is what the streaming job publishes.

:func:`iter_scores` runs a long file in chunks of records, one pipeline run per chunk, so memory
stays bounded by the chunk whatever the file's length. Each chunk after the first starts with
each stream's last records of the chunk before, marked as replays (``REPLAY_HEADER``) exactly as
the Kafka reader's ``warm_restart_frames`` marks them after a restart: they rebuild the stream's
state and emit nothing, so the detections equal one run over the whole file.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam

from costream.connectors import contract
from costream.connectors.contract import REPLAY_HEADER
from costream.connectors.kafka import KafkaRecord, as_outgoing

from .spec import build_pipeline, load_spec

__all__ = ["DEFAULT_CHUNK_RECORDS", "iter_scores", "score_records"]

DEFAULT_CHUNK_RECORDS = 2048
"""Records per pipeline run in :func:`iter_scores` (about 30 MB of 320x240 JPEG frames)."""

_LOCK = threading.Lock()
_SINKS: dict[str, list[contract.OutgoingRecord]] = {}


class _Collect(beam.DoFn):
    """Keeps what a Kafka writer would publish: ``as_outgoing`` of each row, as the writer."""

    def __init__(self, sink: str, format: str | None = None, key: str | None = None) -> None:
        self.sink, self.format, self.key = sink, format, key

    def process(self, element: Any) -> None:
        record = as_outgoing(element, format=self.format, key=self.key)
        if contract.is_replay(record.headers):
            return  # as the writer: built from a replayed record, written in an earlier chunk
        with _LOCK:
            _SINKS[self.sink].append(record)


def _load(spec_path: str | Path) -> dict[str, Any]:
    return load_spec(
        spec_path, defaults={"ContinualInference": {"idle_timer": False, "idle_timeout_s": None}}
    )


def score_records(
    spec_path: str | Path, records: Sequence[contract.OutgoingRecord]
) -> tuple[list[contract.OutgoingRecord], list[contract.OutgoingRecord]]:
    """Run ``records`` through the spec in process; returns (detection records, dead letters)."""
    spec = _load(spec_path)
    kafka = [
        KafkaRecord(r.key, r.value, contract.as_headers(r.headers), "file", 0, i, 0)
        for i, r in enumerate(records)
    ]
    return _run(spec, kafka)


def iter_scores(
    spec_path: str | Path,
    records: Iterable[contract.OutgoingRecord],
    *,
    chunk_records: int = DEFAULT_CHUNK_RECORDS,
) -> Iterator[tuple[list[contract.OutgoingRecord], list[contract.OutgoingRecord]]]:
    """Run ``records`` through the spec chunk by chunk; yields (detections, dead letters) per chunk.

    ``records`` is consumed lazily, at most ``chunk_records`` at a time, so a file of any length
    runs in bounded memory. Before each chunk after the first, each stream's last ``n`` records
    are run again as replays (``n``: the spec's ``warm_restart_frames``, or the model's window
    when that is larger), which rebuilds the per-stream state and emits nothing; for a file of
    one stream the concatenated detections equal :func:`score_records` over all records (scores up
    to float rounding, rtol 1e-5, as after a warm restart of the streaming job). A spec
    that declares neither (``n = 0``) runs all records in one chunk.

    Raises:
        SpecError: the spec is invalid (before any record is read).
    """
    if chunk_records < 1:
        raise ValueError(f"chunk_records must be at least 1, got {chunk_records}.")
    spec = _load(spec_path)
    replay = _replay_frames(spec)
    size = chunk_records if replay else None
    tails: dict[bytes | None, deque[KafkaRecord]] = {}
    source = iter(records)
    offset = 0
    while True:
        chunk = list(itertools.islice(source, size))
        if not chunk:
            return
        kafka = [
            KafkaRecord(r.key, r.value, contract.as_headers(r.headers), "file", 0, offset + i, 0)
            for i, r in enumerate(chunk)
        ]
        offset += len(chunk)
        del chunk
        warm = [
            r._replace(headers=[*r.headers, contract.Header(REPLAY_HEADER, b"1")])
            for tail in tails.values()
            for r in tail
        ]
        for r in kafka:
            tails.setdefault(r.key, deque(maxlen=replay)).append(r)
        yield _run(spec, warm + kafka)


def _replay_frames(spec: dict[str, Any]) -> int:
    """Records that rebuild a stream's state: the readers' warm_restart_frames, model windows."""
    from costream.models.weights import WeightsError
    from costream.models.zoo import read_card

    n = 0
    for t in spec["pipeline"]["transforms"]:
        config = t.get("config") or {}
        if t["type"] == "ReadFramesFromKafka":
            frames = config.get("warm_restart_frames")
            n = max(n, frames if isinstance(frames, int) else 0)
        weights = config.get("weights") if t["type"] == "ContinualInference" else None
        if isinstance(weights, str) and Path(weights).is_file():
            try:
                window = read_card(weights).get("window")
            except WeightsError:
                continue  # the pipeline reports it when the model loads
            n = max(n, window if isinstance(window, int) else 0)
    return n


def _run(
    spec: dict[str, Any], kafka: list[KafkaRecord]
) -> tuple[list[contract.OutgoingRecord], list[contract.OutgoingRecord]]:
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

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
    try:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            build_pipeline(p, spec, replace=replace)
    finally:
        with _LOCK:
            out, dead = (_SINKS.pop(s) for s in sinks.values())
    out.sort(
        key=lambda r: (
            r.key,
            int(contract.header_value(r.headers, contract.HEADER_FRAME_INDEX) or 0),
        )
    )
    return out, dead
