"""``ReadFromKafka``: topic partitions as an unbounded ``PCollection[KafkaRecord]``.

The public builder: it checks its arguments at construction and expands to
``Impulse -> resolve partitions and start offsets -> Reshuffle -> SDF read``. The splittable
DoFn and the delivery contract (at-least-once; offsets committed from bundle finalization) are
:mod:`costream.connectors.kafka.read`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam

from costream.connectors.contract import DEFAULT_MAX_REQUEST_SIZE
from costream.connectors.kafka.config import (
    _READ_RESERVED,
    START_POSITIONS,
    _bootstrap_list,
    _check_client_config,
    _consumer_config,
    _positive,
    _ReadConfig,
)
from costream.connectors.kafka.librdkafka import check_client
from costream.connectors.kafka.offsets import _ResolvePartitions
from costream.connectors.kafka.read import _ReadPartitionFn
from costream.connectors.kafka.records import KafkaRecord

__all__ = ["ReadFromKafka"]


class ReadFromKafka(beam.PTransform):
    """Read topic partitions as an unbounded ``PCollection[KafkaRecord]`` with event times.

    Args:
        bootstrap_servers: ``"host:port"``, comma-separated, or a list.
        topics: one topic name or a list.
        start: ``"earliest"``, ``"latest"``, ``"committed"`` (needs ``group_id``; a partition
            without a committed offset starts at the earliest) or an ``int`` timestamp in ms:
            the first record whose timestamp is at or after it (found by the broker's index,
            then checked by scanning forward, since tansu 0.6 answers 0 for every timestamp).
            On tansu 0.6, ``"latest"`` is off when the partition's last batch held several
            records (it reports the batch's base offset + 1); real Kafka is exact.
        group_id: consumer group whose offsets are read (``start="committed"``) and committed
            after each finalized bundle. Without it nothing is committed. Partitions are
            assigned explicitly; the group is never joined.
        partitions: partition numbers to read (of every topic); default all.
        max_records: read at most this many offsets per partition, then that partition ends.
        stop_after_idle_s: end a partition's read after this many seconds without a record
            (on this worker's monotonic clock: a step of the wall clock does not end it).
            The transform (and ``p.run()``) ends when every partition has ended.
        idle_partition_s: after this many quiet seconds a partition's watermark advances with
            the wall clock (``now - idle_partition_s``) so it does not hold back the others;
            ``None`` disables it (for replays of old data).
        max_records_per_bundle: records per partition per bundle (the duplicate bound, see
            :mod:`costream.connectors.kafka.read`).
        max_bundle_s: wall-clock seconds a bundle may spend on one partition. A partition's
            part of a bundle also ends at the first poll that returns fewer records than
            asked for (caught up with the broker), so under live traffic a bundle holds what
            arrived since the previous one.
        poll_timeout_ms: how long one poll waits for data on a quiet partition; only until the
            bundle has read a record (then what it read is not held back by a quiet one).
        dead_letter_topic: where records that cannot become a ``KafkaRecord`` go, as dead
            letters with stage ``read``, the reason and ``costream.source`` =
            ``topic/partition/offset``: a batch kafka-python cannot parse (a header name that
            is not UTF-8: the batch is fetched raw, its good records are read as usual) or a
            timestamp beyond the largest event time. The reader waits for the broker's
            acknowledgement before it moves on. Without it (or when even the cut-to-fit dead
            letter cannot be written) such a record is skipped, logged and counted
            (``records_skipped``). Either way the offset advances, and is committed.
        dead_letter_max_bytes: largest dead letter the reader writes (see
            :func:`~costream.connectors.contract.sizing.fit_dead_letter`).
        warm_restart_frames: with ``start="committed"``, re-read the records just before each
            partition's committed offset, enough for this many records of every stream (key)
            found there, and mark them with
            :data:`~costream.connectors.contract.headers.REPLAY_HEADER`: stateful stages rebuild each
            stream's state from them and emit nothing for them, so a restart without a
            checkpoint (the embedded runner, a fresh Flink job) is invisible in the output. Use
            the model's window n. 0 (the default) re-reads nothing. Replayed records are
            counted (``records_replayed``) and never committed or dead-lettered again.
        warm_restart_max_records: scan at most this many records back per partition.
        broker_timeout_s: a partition that got no answer from any broker for this long fails
            the read with :class:`~costream.connectors.kafka.errors.BrokerUnavailableError` naming the servers and the position;
            shorter outages (a broker restart) are waited out. On every quiet poll (at most once
            a second) the reader also checks that the partition still reaches its position:
            when the log now ends below it (topic recreated, log truncated) the read fails with
            :class:`~costream.connectors.kafka.errors.PartitionResetError` instead of skipping the new records.
        client_config: extra kafka-python ``KafkaConsumer`` settings, merged last (SASL, SSL,
            fetch sizes...). A value ``{"from_env": "NAME"}`` is read from the environment on
            the worker. The reader's dead-letter producer gets the connection settings. With a
            ``security_protocol`` other than ``PLAINTEXT``, a refused SASL/PLAIN password or a
            broker certificate that fails verification raises :class:`~costream.connectors.kafka.errors.KafkaSecurityError` at
            once (see
            :func:`~costream.connectors.kafka.security.check_security`), not after kafka-python's 30 s of reconnects.
        client: who fetches and parses the records: ``"kafka-python"`` (the default) or
            ``"librdkafka"`` (``confluent_kafka``, C: ~2-3 us a record instead of ~10). Offsets,
            commits, the end-of-log checks and batches kafka-python's lenient reader must take
            apart (header names that are not UTF-8) stay kafka-python's, so the delivery
            contract is the same; ``client_config`` keeps kafka-python's names (translated; one
            without a librdkafka counterpart is refused here).

    Unless ``max_records`` or ``stop_after_idle_s`` ends every partition, the read never ends.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        *,
        start: str | int = "earliest",
        group_id: str | None = None,
        partitions: Sequence[int] | None = None,
        max_records: int | None = None,
        stop_after_idle_s: float | None = None,
        idle_partition_s: float | None = 10.0,
        max_records_per_bundle: int = 500,
        max_bundle_s: float = 1.0,
        poll_timeout_ms: int = 100,
        dead_letter_topic: str | None = None,
        dead_letter_max_bytes: int = DEFAULT_MAX_REQUEST_SIZE,
        broker_timeout_s: float = 60.0,
        client_config: Mapping[str, Any] | None = None,
        warm_restart_frames: int = 0,
        warm_restart_max_records: int = 100_000,
        client: str = "kafka-python",
    ) -> None:
        super().__init__()
        servers = _bootstrap_list(bootstrap_servers)
        if isinstance(warm_restart_frames, bool) or not (
            isinstance(warm_restart_frames, int) and warm_restart_frames >= 0
        ):
            raise ValueError(
                f"warm_restart_frames must be a whole number of frames >= 0, got {warm_restart_frames!r}."
            )
        _positive(
            "warm_restart_max_records", warm_restart_max_records, integer=True, optional=False
        )
        if dead_letter_topic is not None and (
            not isinstance(dead_letter_topic, str) or not dead_letter_topic
        ):
            raise ValueError(
                f"dead_letter_topic must be a topic name or None, got {dead_letter_topic!r}."
            )
        _positive("dead_letter_max_bytes", dead_letter_max_bytes, integer=True, optional=False)
        _positive("broker_timeout_s", broker_timeout_s, optional=False)
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise ValueError(
                f"topics must be a topic name or a non-empty list of names, got {topics!r}."
            )
        if isinstance(start, bool) or not (
            start in START_POSITIONS or (isinstance(start, int) and start >= 0)
        ):
            raise ValueError(
                f"start={start!r} is not valid; use one of {', '.join(map(repr, START_POSITIONS))} "
                "or a timestamp in ms since the epoch (an int >= 0)."
            )
        if start == "committed" and not group_id:
            raise ValueError("start='committed' needs a group_id whose committed offsets to read.")
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ValueError(f"group_id must be a non-empty string or None, got {group_id!r}.")
        parts: tuple[int, ...] | None = None
        if partitions is not None:
            parts = tuple(partitions)
            if (
                not parts
                or not all(isinstance(p, int) and p >= 0 for p in parts)
                or len(set(parts)) != len(parts)
            ):
                raise ValueError(
                    f"partitions must be a non-empty list of distinct partition numbers >= 0, got {partitions!r}."
                )
        _positive("max_records", max_records, integer=True)
        _positive("stop_after_idle_s", stop_after_idle_s)
        _positive("idle_partition_s", idle_partition_s)
        _positive("max_records_per_bundle", max_records_per_bundle, integer=True, optional=False)
        _positive("max_bundle_s", max_bundle_s, optional=False)
        _positive("poll_timeout_ms", poll_timeout_ms, integer=True, optional=False)
        cfg = _check_client_config(client_config, _consumer_config(), _READ_RESERVED)
        check_client(client, cfg, consumer=True)
        self._cfg = _ReadConfig(
            servers, topic_list, start, group_id, parts, max_records,
            None if stop_after_idle_s is None else float(stop_after_idle_s),
            None if idle_partition_s is None else float(idle_partition_s),
            max_records_per_bundle, float(max_bundle_s), poll_timeout_ms, cfg,
            dead_letter_topic, dead_letter_max_bytes, float(broker_timeout_s),
            warm_restart_frames, warm_restart_max_records, client,
        )  # fmt: skip

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "ResolvePartitions" >> beam.ParDo(_ResolvePartitions(self._cfg))
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadPartitions"
            >> beam.ParDo(_ReadPartitionFn(self._cfg)).with_output_types(KafkaRecord)
        )
