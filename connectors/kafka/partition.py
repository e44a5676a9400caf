"""The private worker of a Kafka read: one consumer for one partition, and where it stands.

:class:`_PartitionReader` owns the I/O (seeking, polling, committing) and remembers its
position and its last commit, so it can say where it is; a batch kafka-python cannot parse is
fetched raw (:mod:`costream.connectors.kafka.raw`) and read record by record.
"""

import logging
import time
from collections.abc import Iterable
from typing import NamedTuple

from costream.connectors.contract import Header
from costream.connectors.kafka.config import _ReadConfig, resolve_client_config
from costream.connectors.kafka.security import check_security

__all__ = ["FETCH_MAX_WAIT_MS"]

_LOG = logging.getLogger(__name__)


class _Fetched(NamedTuple):
    """A record as the reader got it; ``error`` is set when it cannot become a KafkaRecord."""

    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    error: str | None


def _fetched(offset: int, timestamp: int | None, key: bytes | None, value: bytes | None,
             headers: Iterable[tuple[str, bytes | None]]) -> _Fetched:  # fmt: skip
    """A readable record as both clients give it: header (name, bytes or None) pairs.

    The per-record cost of the read: the clients' keys, values and header values are bytes
    already, so a Header is made from the pair as it is (tuple.__new__, no field-by-field call),
    and a _Fetched the same way: a third of what field-by-field Header(k, bytes(v)) rows cost.
    """
    new = tuple.__new__
    hs = [new(Header, h) if h[1] is not None else Header(h[0], b"") for h in headers]
    return new(_Fetched, (offset, timestamp, key, value, hs, None))


FETCH_MAX_WAIT_MS = 20
"""How long ReadFromKafka lets the broker hold a fetch that has no data yet (client_config may
override ``fetch_max_wait_ms``)."""


class _PartitionReader:
    """Owns the I/O for one topic partition: seeking, polling and committing.

    It remembers where its consumer stands so consecutive reads from the SDF do not seek (a seek
    drops the fetcher's prefetched data), and what it committed last, so it can say where it is.
    """

    def __init__(self, cfg: _ReadConfig, topic: str, partition: int) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.tp = TopicPartition(topic, partition)
        self.group_id = cfg.group_id
        settings = resolve_client_config(cfg.client_config)
        check_security("ReadFromKafka", cfg.bootstrap_servers, settings)
        self._consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.max_records_per_bundle,
            client_id=f"costream-read-{topic}-{partition}",
            # kafka-python's 500 ms default lets a broker hold a fetch that long; tansu does, and
            # it was most of the demo's end-to-end latency (p50 152 -> 50 ms at 10 ms). An idle
            # partition costs ~50 small fetches/s. client_config may set it back.
            **{"fetch_max_wait_ms": FETCH_MAX_WAIT_MS, **settings},
        )
        # Explicit assignment: no group join (tansu takes ~session_timeout/2 to join a group),
        # no rebalances; the runner decides which worker reads which partition.
        self._consumer.assign([self.tp])
        self.position: int | None = None
        self.committed: int | None = None
        self.last_contact = time.monotonic()
        self.last_check = time.monotonic()
        self._checked_end: tuple[int, int] | None = None

    def read(self, start: int, max_records: int, timeout_ms: int) -> list[_Fetched]:
        """Records from ``start`` on (at most ``max_records``), waiting up to ``timeout_ms``.

        A batch kafka-python cannot parse (a non-UTF-8 header name) is fetched raw and read
        here: its good records come back as usual, the bad ones with ``error`` set.
        """
        from kafka.errors import CorruptRecordError

        from costream.connectors.kafka.raw import fetch_lenient

        if self.position != start:
            self._consumer.seek(self.tp, start)
            self.position = start
        try:
            batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except CorruptRecordError as err:
            at = self._consumer.position(self.tp)
            raw, after = fetch_lenient(self._consumer, self.tp, at, 64 << 20, 10_000)
            if not raw or after is None:
                raise RuntimeError(
                    f"{self!r}: kafka-python cannot parse the record batch at offset {at} ({err}) "
                    "and fetching it raw returned no whole batch."
                ) from err
            _LOG.warning("ReadFromKafka: %r: batch at offset %d is unparseable (%s); read it raw.",
                         self, at, err)  # fmt: skip
            self._consumer.seek(self.tp, after)
            self.position = after
            return [_Fetched(r.offset, r.timestamp, r.key, r.value,
                             [Header(k.decode("utf-8", "backslashreplace"), v or b"")
                              for k, v in r.headers], r.error) for r in raw]  # fmt: skip
        records = batch.get(self.tp, [])
        if records:
            self.position = records[-1].offset + 1
            self.last_contact = time.monotonic()
        return [_fetched(r.offset, r.timestamp, r.key, r.value, r.headers) for r in records]

    def connected(self) -> bool:
        """Whether the consumer holds a live connection to a broker (updates ``last_contact``)."""
        client = self._consumer._client  # no public "am I connected" in kafka-python
        if any(client.connected(b.node_id) for b in client.cluster.brokers()):
            self.last_contact = time.monotonic()
            return True
        return False

    def lost_position(self, position: int, end: int) -> bool:
        """Whether the record before ``position`` is gone, now that the log reports ``end``.

        The check behind a low end offset: tansu 0.6 reports the base offset of the last batch
        + 1, so only a raw fetch of ``position - 1`` tells a recreated log from a batched one.
        """
        from costream.connectors.kafka.raw import fetch_lenient

        if self._checked_end == (position, end):
            return False
        try:
            raw, _ = fetch_lenient(self._consumer, self.tp, position - 1, 1 << 20, 10_000)
        except Exception:  # OffsetOutOfRange: the record is gone
            return True
        if any(r.offset == position - 1 for r in raw):
            self._checked_end = (position, end)
            return False
        return True

    def end_offset(self) -> int:
        """The partition's end offset now (raises the client's error when no broker answers)."""
        return int(self._consumer.end_offsets([self.tp])[self.tp])

    def commit(self, next_offset: int) -> None:
        """Commit ``next_offset`` (the offset of the next record to read) for ``group_id``."""
        from kafka.structs import OffsetAndMetadata

        if self.group_id is None or (self.committed is not None and next_offset <= self.committed):
            return
        self._consumer.commit({self.tp: OffsetAndMetadata(next_offset, "", -1)})
        self.committed = next_offset

    def close(self) -> None:
        """Close the consumer (without committing anything)."""
        self._consumer.close(autocommit=False)

    def __repr__(self) -> str:
        return (
            f"_PartitionReader({self.tp.topic}[{self.tp.partition}], position={self.position}, "
            f"committed={self.committed}, group_id={self.group_id!r})"
        )


class _RdPartitionReader(_PartitionReader):
    """A :class:`_PartitionReader` whose polls run on librdkafka (``client="librdkafka"``).

    kafka-python parses every record in Python (~10 us a record, measured); librdkafka fetches
    and parses in C. Commits, the end-of-log checks and batches with header names that are not
    UTF-8 stay with the kafka-python consumer, which is never polled otherwise.
    """

    def __init__(self, cfg: _ReadConfig, topic: str, partition: int) -> None:
        from costream.connectors.kafka.librdkafka import RdFetcher

        super().__init__(cfg, topic, partition)
        self._rd = RdFetcher(
            cfg.bootstrap_servers, topic, partition, cfg.group_id,
            f"costream-read-{topic}-{partition}", FETCH_MAX_WAIT_MS,
            resolve_client_config(cfg.client_config),
        )  # fmt: skip

    def read(self, start: int, max_records: int, timeout_ms: int) -> list[_Fetched]:
        try:
            got = self._rd.read(start, max_records, timeout_ms)
        except Exception as err:  # a header name that is not UTF-8 (RdFetcher): kafka-python's
            _LOG.info("ReadFromKafka: %r: librdkafka could not read from offset %d (%r); "
                      "reading it with kafka-python.", self, start, err)  # fmt: skip
            self._rd.reset()
            self.position = None  # its consumer seeks there
            return super().read(start, max_records, max(timeout_ms, 1000))
        out = [_fetched(o, ts, k, v, hs or ()) for o, ts, k, v, hs in got]
        if out:
            self.position = out[-1].offset + 1
            self.last_contact = time.monotonic()
        return out

    def connected(self) -> bool:
        if self._rd.probe():
            self.last_contact = time.monotonic()
            return True
        return False

    def end_offset(self) -> int:
        return self._rd.end_offset()

    def close(self) -> None:
        try:
            self._rd.close()
        finally:
            super().close()
