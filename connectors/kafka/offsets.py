"""Where a Kafka read starts: partitions, start offsets, and the warm-restart back-scan.

``ReadFromKafka`` begins with ``Impulse -> _ResolvePartitions``: one
:class:`_PartitionDescriptor` (topic, partition, offset range) per partition read, its start
resolved from ``start`` (``earliest``, ``latest``, ``committed`` or a timestamp), and with
``warm_restart_frames`` the offset to re-read from so each stream's state can be rebuilt
(:func:`_replay_start`).
"""

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam

from costream.connectors.kafka.config import _ReadConfig, resolve_client_config
from costream.connectors.kafka.security import check_security

__all__ = ["UNBOUNDED"]

_LOG = logging.getLogger(__name__)

UNBOUNDED = sys.maxsize


class _PartitionDescriptor(NamedTuple):
    """One SDF element: a topic partition and its offset range [start, stop).

    Records below ``replay_until`` (the committed offset) are re-read to rebuild state: they are
    emitted with :data:`REPLAY_HEADER` and never committed.
    """

    topic: str
    partition: int
    start: int
    stop: int
    replay_until: int = 0


def _replay_start(
    consumer: Any, tp: Any, earliest: int, committed: int, frames: int, max_records: int
) -> int:
    """Where to re-read from so each stream (record key) gets its last ``frames`` records back.

    Scans backwards from ``committed`` in growing blocks, collecting the offsets of each key,
    until every key seen has ``frames`` records, the partition starts, or ``max_records`` were
    scanned; returns the smallest offset any key needs (``committed`` when nothing precedes it).
    A stream whose older records lie beyond the scan comes back partly warm (logged).
    """
    offsets: dict[bytes | None, list[int]] = {}
    hi, block, scanned = committed, max(1024, 4 * frames), 0
    consumer.assign([tp])
    while hi > earliest and scanned < max_records:
        lo = max(earliest, hi - block, committed - max_records)
        found: dict[bytes | None, list[int]] = {}
        consumer.seek(tp, lo)
        position = lo
        while position < hi:
            records = consumer.poll(timeout_ms=2000, max_records=2000).get(tp, [])
            if not records:
                break  # a compacted or truncated log: take what there is
            for r in records:
                if r.offset < hi:
                    found.setdefault(r.key, []).append(int(r.offset))
            position = records[-1].offset + 1
        for key, offs in found.items():
            offsets[key] = offs + offsets.get(key, [])
        scanned += hi - lo
        hi, block = lo, 2 * block
        if all(len(v) >= frames for v in offsets.values()):
            break
    if not offsets:
        return committed
    short = [k for k, v in offsets.items() if len(v) < frames]
    if short and hi > earliest:
        _LOG.warning("ReadFromKafka: %s[%d]: %d stream(s) have fewer than %d records in the %d "
                     "before offset %d; they restart partly cold.", tp.topic, tp.partition,
                     len(short), frames, scanned, committed)  # fmt: skip
    return min(v[-frames] if len(v) >= frames else v[0] for v in offsets.values())


def _first_offset_at_or_after(consumer: Any, tp: Any, ts_ms: int) -> int:
    """The offset of the first record with timestamp >= ``ts_ms``, or the end if there is none.

    Starts from the broker's ``offsets_for_times`` answer (exact on Kafka) and then scans
    forward, because some brokers (tansu 0.6) answer offset 0 for every timestamp.
    """
    found = consumer.offsets_for_times({tp: ts_ms}).get(tp)
    if found is None:
        return int(consumer.end_offsets([tp])[tp])
    consumer.assign([tp])
    consumer.seek(tp, found.offset)
    next_offset = found.offset
    while True:
        records = consumer.poll(timeout_ms=1000, max_records=500).get(tp, [])
        if not records:
            return next_offset
        for r in records:
            if r.timestamp >= ts_ms:
                return int(r.offset)
            next_offset = r.offset + 1


class _ResolvePartitions(beam.DoFn):
    """Impulse -> one :class:`_PartitionDescriptor` per assigned partition, start resolved."""

    def __init__(self, cfg: _ReadConfig) -> None:
        self._cfg = cfg

    def process(self, _: bytes) -> Iterator[_PartitionDescriptor]:
        from kafka import KafkaConsumer, TopicPartition

        cfg = self._cfg
        settings = resolve_client_config(cfg.client_config)
        check_security("ReadFromKafka", cfg.bootstrap_servers, settings)
        consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            client_id="costream-read-resolve",
            **settings,
        )
        try:
            for topic in cfg.topics:
                existing = _partitions_of(consumer, topic)
                wanted = sorted(existing) if cfg.partitions is None else list(cfg.partitions)
                missing = sorted(set(wanted) - existing)
                if missing:
                    raise ValueError(
                        f"Topic {topic!r} has no partition(s) {missing}; it has {sorted(existing)}."
                    )
                tps = [TopicPartition(topic, p) for p in wanted]
                starts = _start_offsets(consumer, tps, cfg)
                earliest = consumer.beginning_offsets(tps) if cfg.warm_restart_frames else {}
                for tp in tps:
                    start = starts[tp]
                    stop = UNBOUNDED if cfg.max_records is None else start + cfg.max_records
                    replay = start
                    if (
                        cfg.start == "committed"
                        and cfg.warm_restart_frames
                        and start > earliest[tp]
                    ):
                        replay = _replay_start(
                            consumer, tp, int(earliest[tp]), start, cfg.warm_restart_frames,
                            cfg.warm_restart_max_records,
                        )  # fmt: skip
                    _LOG.info("ReadFromKafka: %s[%d] from offset %d%s", topic, tp.partition, start,
                              f" (re-reading {start - replay} records from {replay} to rebuild "
                              "state)" if replay < start else "")  # fmt: skip
                    yield _PartitionDescriptor(topic, tp.partition, replay, stop, start)
        finally:
            consumer.close(autocommit=False)


_METADATA_WAIT_S = 5.0  # how long a just-created topic may take to show up in metadata


def _partitions_of(consumer: Any, topic: str) -> set[int]:
    timeout_s = _METADATA_WAIT_S
    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if time.monotonic() > deadline:
            raise ValueError(
                f"Topic {topic!r} does not exist on {consumer.config['bootstrap_servers']} "
                f"(waited {timeout_s:g} s for its metadata); create it first."
            )
        time.sleep(0.2)


def _start_offsets(consumer: Any, tps: list[Any], cfg: _ReadConfig) -> dict[Any, int]:
    if cfg.start == "earliest":
        return {tp: int(o) for tp, o in consumer.beginning_offsets(tps).items()}
    if cfg.start == "latest":
        return {tp: int(o) for tp, o in consumer.end_offsets(tps).items()}
    if cfg.start == "committed":
        earliest = consumer.beginning_offsets(tps)
        out = {}
        for tp in tps:
            committed = consumer.committed(tp)
            if committed is None:
                _LOG.warning(
                    "ReadFromKafka: group %r has no committed offset for %s[%d]; starting at the "
                    "earliest offset %d.",
                    cfg.group_id,
                    tp.topic,
                    tp.partition,
                    earliest[tp],
                )
            out[tp] = int(earliest[tp] if committed is None else max(committed, earliest[tp]))
        return out
    assert isinstance(cfg.start, int)
    return {tp: _first_offset_at_or_after(consumer, tp, cfg.start) for tp in tps}
