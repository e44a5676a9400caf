"""Kafka read/write for Beam in pure Python (kafka-python), usable on every runner.

``ReadFromKafka`` is ``Impulse -> resolve partitions and start offsets -> Reshuffle -> SDF read``.
The splittable DoFn reads one topic partition per element with an offset-range restriction, emits
:class:`KafkaRecord` elements stamped with the record timestamp (event time), holds a per-partition
watermark, and commits offsets only from bundle finalization. ``WriteToKafka`` produces elements
and flushes in ``finish_bundle``, so a bundle succeeds only once the broker acknowledged it. It
sizes every record first: one above ``max_request_size`` is an error, except in
``WriteDeadLetters``, which cuts the value to fit and says so in headers (a dead letter is the
original record plus its reason, so an input near the limit would otherwise never get out).

Delivery: at-least-once end to end. Offsets are committed (when ``group_id`` is given) from the
bundle finalizer, which a runner calls only after it has durably committed the bundle's output;
so after a crash, ``start="committed"`` re-reads exactly the records read since the last finalized
bundle. On the FnApiRunner (measured, Beam 2.77) every bundle is finalized synchronously right
after it succeeds, and a bundle holds at most ``max_records_per_bundle`` records per partition:
that is the duplicate bound there. On a runner that never finalizes bundles, offsets are never
committed: nothing is lost, but ``start="committed"`` then replays from whatever was committed
before (use a timestamp start there instead).

Example:
    >>> import apache_beam as beam  # doctest: +SKIP
    >>> with beam.Pipeline(runner="FnApiRunner") as p:  # doctest: +SKIP
    ...     _ = (
    ...         p
    ...         | ReadFromKafka("127.0.0.1:9092", "frames", start="earliest", stop_after_idle_s=5)
    ...         | beam.Map(lambda r: OutgoingRecord(r.key, r.value, r.headers))
    ...         | WriteToKafka("127.0.0.1:9092", "frames-copy")
    ...     )
"""

import base64
import functools
import hashlib
import json
import logging
import os
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.coders import Coder
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker, WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Duration, Timestamp
from costream.connectors import codecs
from costream.connectors.codecs import DeadLetter, Detection, Header, OutgoingRecord

__all__ = [
    "DEFAULT_MAX_REQUEST_SIZE",
    "FORMATS",
    "KafkaRecord",
    "OutgoingRecord",
    "ReadFromKafka",
    "RecordTooLargeError",
    "REPLAY_HEADER",
    "COMPRESSION_TYPES",
    "START_POSITIONS",
    "WriteDeadLetters",
    "WriteToKafka",
    "BrokerUnavailableError",
    "KafkaSecurityError",
    "PartitionResetError",
    "SECURITY_CHECK_TIMEOUT_S",
    "as_outgoing",
    "check_security",
    "fit_dead_letter",
    "fit_record",
    "record_size",
]

_LOG = logging.getLogger(__name__)

START_POSITIONS = ("earliest", "latest", "committed")
"""Named start positions; an ``int`` start is a timestamp in ms since the epoch."""

UNBOUNDED = sys.maxsize
REPLAY_HEADER = "costream.replay"
"""Header the reader puts on records it re-reads to rebuild state (``warm_restart_frames``).

Downstream stages step their state with such records but emit nothing for them. The reader
strips this header from every record it reads from the broker, so only its own marks count.
"""
DEFAULT_MAX_REQUEST_SIZE = 1 << 20
"""kafka-python's default largest request, and about Kafka's default ``message.max.bytes``."""
Oversize = Literal["error", "truncate", "dead_letter"]
OVERSIZE_POLICIES = ("error", "truncate", "dead_letter")
_METRICS_NS = "costream.kafka"


class KafkaRecord(NamedTuple):
    """One consumed Kafka record, a Beam schema. ``timestamp_ms``: the record timestamp (ms).

    ``headers`` are :class:`~costream.connectors.codecs.Header` rows (``key``, ``value``), which
    unpack and compare like ``(name, value)`` pairs.
    """

    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


# --- coders ---------------------------------------------------------------------------------
# KafkaRecord, Detection and DeadLetter travel as Beam rows (RowCoder: portable, readable by
# Java and by Beam SQL, and faster here than the hand-written coder KafkaRecord had: 1.2 + 1.9
# us vs 1.9 + 3.8 us to encode + decode a features record, benchmarks/bench_rows.py). RowCoder
# decodes into classes it generates from the schema, so code downstream reads fields by name
# and never relies on isinstance (see _kind). OutgoingRecord keeps its own coder: it is the
# writers' input, not a stage boundary, and takes plain (name, value) header pairs, which rows
# cannot.

_U32 = struct.Struct(">I")


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


class OutgoingRecordCoder(Coder):
    """Binary coder for :class:`OutgoingRecord` (length-prefixed fields, big-endian)."""

    def encode(self, value: OutgoingRecord) -> bytes:  # noqa: D102
        out: list[bytes] = []
        _put_bytes(out, value.key)
        _put_bytes(out, value.value)
        out.append(_U32.pack(len(value.headers)))
        for name, header in value.headers:
            _put_bytes(out, name.encode("utf-8"))
            _put_bytes(out, bytes(header))
        return b"".join(out)

    def decode(self, encoded: bytes) -> OutgoingRecord:  # noqa: D102
        buf = memoryview(encoded)
        key, pos = _get_bytes(buf, 0)
        value, pos = _get_bytes(buf, pos)
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        headers = []
        for _ in range(count):
            name, pos = _get_bytes(buf, pos)
            header, pos = _get_bytes(buf, pos)
            headers.append(Header((name or b"").decode("utf-8"), header or b""))
        return OutgoingRecord(key, value or b"", headers)

    def is_deterministic(self) -> bool:  # noqa: D102
        return True

    def to_type_hint(self) -> type:  # noqa: D102
        return OutgoingRecord


for _row in (KafkaRecord, Detection, DeadLetter):
    beam.coders.registry.register_coder(_row, beam.coders.RowCoder)
beam.coders.registry.register_coder(OutgoingRecord, OutgoingRecordCoder)


# --- configuration -------------------------------------------------------------------------


def _bootstrap_list(bootstrap_servers: str | Sequence[str]) -> list[str]:
    servers = (
        [s.strip() for s in bootstrap_servers.split(",")]
        if isinstance(bootstrap_servers, str)
        else list(bootstrap_servers)
    )
    if not servers or not all(isinstance(s, str) and ":" in s and s.strip() for s in servers):
        raise ValueError(
            f"bootstrap_servers must be 'host:port' or a list of them, got {bootstrap_servers!r}."
        )
    return servers


def _check_client_config(
    client_config: Mapping[str, Any] | None, known: Mapping[str, Any], reserved: Mapping[str, str]
) -> dict[str, Any]:
    """Validate keys against kafka-python's config names; refuse the ones this transform owns."""
    cfg = dict(client_config or {})
    for key, value in cfg.items():
        if key in reserved:
            raise ValueError(f"client_config[{key!r}] is not allowed here; {reserved[key]}")
        if key not in known:
            close = sorted(k for k in known if key.split("_")[0] in k)[:6]
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise ValueError(
                f"client_config has the unknown kafka-python setting {key!r}.{hint} "
                "See the KafkaConsumer/KafkaProducer documentation for valid names."
            )
        if isinstance(value, Mapping) and set(value) != {"from_env"}:
            raise ValueError(
                f"client_config[{key!r}] is a mapping; the only mapping allowed is "
                "{'from_env': 'VARIABLE'}, which reads the value from an environment variable."
            )
    return cfg


def resolve_client_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Replace ``{"from_env": "NAME"}`` values by ``os.environ["NAME"]`` (on the worker).

    Secrets such as ``sasl_plain_password`` thus never need to appear in a spec or be pickled
    into the pipeline graph.
    """
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            name = value["from_env"]
            if name not in os.environ:
                raise ValueError(
                    f"client_config[{key!r}] reads the environment variable {name!r}, "
                    "which is not set on this worker."
                )
            out[key] = os.environ[name]
        else:
            out[key] = value
    return out


class KafkaSecurityError(RuntimeError):
    """A broker refused the client's SASL credentials, or its TLS certificate was not trusted."""


SECURITY_CHECK_TIMEOUT_S = 5.0
"""How long the security check before a client waits for one bootstrap server."""


def check_security(
    what: str,
    servers: Sequence[str],
    settings: Mapping[str, Any],
    timeout_s: float = SECURITY_CHECK_TIMEOUT_S,
) -> None:
    """Raise one :class:`KafkaSecurityError` when TLS or SASL/PLAIN with ``settings`` cannot work.

    kafka-python treats a refused password or an untrusted certificate like a broker that is
    down: it logs, backs off and reconnects until its bootstrap timeout (30 s), then raises a
    bare ``KafkaTimeoutError``. So before a reader or writer makes a client whose
    ``security_protocol`` is not ``PLAINTEXT``, this tries the bootstrap servers once each
    (``timeout_s`` per socket operation), with the client's resolved ``settings``: the TLS
    handshake (``SSL``, ``SASL_SSL``) verifies the certificate as kafka-python would
    (``ssl_cafile`` or the system CAs, ``ssl_check_hostname``, ``ssl_certfile``...), then
    ``SASL_*`` with mechanism ``PLAIN`` authenticates. A certificate that fails verification, a
    failed handshake, or a refused authentication raises, naming the server, the bootstrap
    servers and what failed; the first server that passes ends the check. A server that does not
    answer is skipped: outages are the client's own deadlines' business (``broker_timeout_s``,
    ``flush_timeout_s``). Other SASL mechanisms get the TLS part only. ``what`` starts the
    message (``"ReadFromKafka"``).
    """
    protocol = str(settings.get("security_protocol") or "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return
    listed = ",".join(servers)
    ctx = _ssl_context(what, settings) if protocol in ("SSL", "SASL_SSL") else None
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue
        try:
            if ctx is not None:
                sock = _tls_handshake(what, ctx, sock, host, server, listed, settings)
            if protocol.startswith("SASL_"):
                _sasl_plain_check(what, sock, server, listed, settings)
            return
        except (OSError, EOFError, struct.error):
            continue  # the server went away mid-check: not a security answer
        finally:
            sock.close()


def _ssl_context(what: str, cfg: Mapping[str, Any]) -> ssl.SSLContext:
    """The client's TLS context, built as kafka-python builds it (kafka/net/transport.py)."""
    if cfg.get("ssl_context") is not None:
        return cfg["ssl_context"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = bool(cfg.get("ssl_check_hostname", True))
    try:
        if cfg.get("ssl_cafile"):
            ctx.load_verify_locations(cfg["ssl_cafile"])
        else:
            ctx.load_default_certs()
        if cfg.get("ssl_certfile"):
            ctx.load_cert_chain(
                cfg["ssl_certfile"], cfg.get("ssl_keyfile"), cfg.get("ssl_password")
            )
        if cfg.get("ssl_crlfile"):
            ctx.load_verify_locations(cfg["ssl_crlfile"])
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if cfg.get("ssl_ciphers"):
            ctx.set_ciphers(cfg["ssl_ciphers"])
    except (OSError, ValueError) as err:
        files = {k: cfg[k] for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile")
                 if cfg.get(k)}  # fmt: skip
        raise KafkaSecurityError(
            f"{what}: the TLS settings in client_config cannot be loaded ({err}); files: {files}."
        ) from err
    return ctx


def _tls_handshake(
    what: str, ctx: ssl.SSLContext, sock: socket.socket, host: str, server: str, listed: str,
    cfg: Mapping[str, Any],
) -> socket.socket:  # fmt: skip
    trusted = (
        f"the CA certificates in ssl_cafile={cfg['ssl_cafile']!r}"
        if cfg.get("ssl_cafile")
        else "the system's CA certificates (no ssl_cafile given)"
    )
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as err:
        raise KafkaSecurityError(
            f"{what}: certificate verification failed for {server} (bootstrap servers {listed}):"
            f" {err.verify_message}. The client trusts {trusted}; set ssl_cafile to the CA that "
            "signed the broker's certificate (and ssl_check_hostname=False only if the "
            "certificate does not name this host)."
        ) from None
    except ssl.SSLEOFError:
        # What a Kafka listener without TLS answers to a ClientHello (measured on Kafka 4.1).
        raise KafkaSecurityError(
            f"{what}: {server} (bootstrap servers {listed}) closed the connection during the TLS "
            f"handshake. Is that listener's protocol {cfg.get('security_protocol')}? (A listener "
            "without TLS does this; so does a broker that is shutting down.)"
        ) from None
    except ssl.SSLError as err:
        raise KafkaSecurityError(
            f"{what}: the TLS handshake with {server} (bootstrap servers {listed}) failed: "
            f"{err.reason or err}. Is that listener's protocol {cfg.get('security_protocol')}?"
        ) from None


def _kafka_request(sock: socket.socket, api_key: int, version: int, body: bytes) -> memoryview:
    """One request (header v1, client id ``costream-security-check``); the response body."""
    client = b"costream-security-check"
    msg = struct.pack(">hhih", api_key, version, api_key, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
    resp = memoryview(_recv_exactly(sock, size))
    if struct.unpack_from(">i", resp)[0] != api_key:
        raise EOFError("the answer does not match the request")
    return resp[4:]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the broker closed the connection")
        buf += chunk
    return bytes(buf)


def _sasl_plain_check(
    what: str, sock: socket.socket, server: str, listed: str, cfg: Mapping[str, Any]
) -> None:
    """SaslHandshake v1 + SaslAuthenticate v1 with PLAIN (RFC 4616), as the client would."""
    mechanism = str(cfg.get("sasl_mechanism") or "")
    user, password = cfg.get("sasl_plain_username"), cfg.get("sasl_plain_password")
    if mechanism.upper() != "PLAIN" or user is None or password is None:
        return
    body = _kafka_request(sock, 17, 1, struct.pack(">h", 5) + b"PLAIN")  # SaslHandshake
    (error,) = struct.unpack_from(">h", body)
    if error:
        offered, pos = [], 6
        for _ in range(struct.unpack_from(">i", body, 2)[0]):
            (n,) = struct.unpack_from(">h", body, pos)
            offered.append(bytes(body[pos + 2 : pos + 2 + n]).decode())
            pos += 2 + n
        raise KafkaSecurityError(
            f"{what}: SASL authentication failed on {server} (bootstrap servers {listed}): the "
            f"broker does not accept mechanism PLAIN there (error code {error}; it offers "
            f"{offered or 'none'}). Check security_protocol and sasl_mechanism."
        )
    token = b"\0" + str(user).encode() + b"\0" + str(password).encode()
    body = _kafka_request(sock, 36, 1, struct.pack(">i", len(token)) + token)  # SaslAuthenticate
    error, n = struct.unpack_from(">hh", body)
    if error:
        message = bytes(body[4 : 4 + n]).decode("utf-8", "replace") if n >= 0 else ""
        raise KafkaSecurityError(
            f"{what}: SASL/PLAIN authentication as {user!r} failed on {server} (bootstrap "
            f"servers {listed}): the broker answered {message!r} (error code {error}). Check "
            "sasl_plain_username and sasl_plain_password in client_config (a "
            "{'from_env': 'VARIABLE'} value is read from the worker's environment)."
        )


def _producer_settings(client_config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection settings (security, SASL, SSL...) of a reader's config a producer takes."""
    known = _producer_config()
    skip = {"client_id", *_WRITE_RESERVED}
    return {
        k: v
        for k, v in resolve_client_config(client_config).items()
        if k in known and k not in skip
    }


def _consumer_config() -> dict[str, Any]:
    from kafka import KafkaConsumer

    return KafkaConsumer.DEFAULT_CONFIG


def _producer_config() -> dict[str, Any]:
    from kafka import KafkaProducer

    return KafkaProducer.DEFAULT_CONFIG


_READ_RESERVED = {
    "bootstrap_servers": "pass bootstrap_servers as the first argument.",
    "group_id": "pass group_id as the group_id argument.",
    "enable_auto_commit": "offsets are committed from bundle finalization, never automatically.",
    "key_deserializer": "keys are emitted as bytes.",
    "value_deserializer": "values are emitted as bytes.",
}
_WRITE_RESERVED = {
    "bootstrap_servers": "pass bootstrap_servers as the first argument.",
    "acks": "pass acks as the acks argument.",
    "retries": "pass retries as the retries argument.",
    "max_request_size": "pass max_request_size as the max_request_size argument (records are "
    "sized against it before they are sent).",
    "key_serializer": "keys must already be bytes.",
    "value_serializer": "values must already be bytes.",
    "compression_type": "pass compression_type as the compression_type argument.",
}

COMPRESSION_TYPES = ("gzip", "snappy", "lz4", "zstd")
"""Record batch codecs; all four are read, and WriteToKafka writes any of them."""


def _check_codec(compression_type: str | None) -> None:
    if compression_type is None:
        return
    if compression_type not in COMPRESSION_TYPES:
        raise ValueError(
            f"compression_type={compression_type!r} is not valid; use None or one of "
            f"{', '.join(map(repr, COMPRESSION_TYPES))}."
        )
    from kafka import codec

    packages = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}
    if not getattr(codec, f"has_{compression_type}")():
        raise ValueError(
            f"compression_type={compression_type!r} needs the {packages[compression_type]!r} "
            "package, which is not installed."
        )


class _ReadConfig(NamedTuple):
    bootstrap_servers: list[str]
    topics: list[str]
    start: str | int
    group_id: str | None
    partitions: tuple[int, ...] | None
    max_records: int | None
    stop_after_idle_s: float | None
    idle_partition_s: float | None
    max_records_per_bundle: int
    max_bundle_s: float
    poll_timeout_ms: int
    client_config: dict[str, Any]
    dead_letter_topic: str | None = None
    dead_letter_max_bytes: int = DEFAULT_MAX_REQUEST_SIZE
    broker_timeout_s: float = 60.0
    warm_restart_frames: int = 0
    warm_restart_max_records: int = 100_000


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


# --- the private worker: one consumer for one partition ------------------------------------


class _Fetched(NamedTuple):
    """A record as the reader got it; ``error`` is set when it cannot become a KafkaRecord."""

    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    error: str | None


class BrokerUnavailableError(RuntimeError):
    """No broker answered within the configured deadline."""


class PartitionResetError(RuntimeError):
    """A partition's log no longer holds the reader's position (topic recreated or truncated)."""


HEADER_SOURCE = "costream.source"
"""Dead letters written by the reader: where the record was, ``topic/partition/offset``."""
HEADER_DROPPED_HEADERS = "costream.dropped_headers"
HEADER_ORIGINAL_KEY_SIZE = "costream.original_key_size"
HEADER_ORIGINAL_KEY_SHA256 = "costream.original_key_sha256"
_MAX_EVENT_MS = MAX_TIMESTAMP.micros // 1000 - 1


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
        from costream.connectors.kafka_raw import fetch_lenient
        from kafka.errors import CorruptRecordError

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
        return [_Fetched(r.offset, r.timestamp, r.key, r.value,
                         [Header(k, bytes(v or b"")) for k, v in r.headers], None)
                for r in records]  # fmt: skip

    def connected(self) -> bool:
        """Whether the consumer holds a live connection to a broker (updates ``last_contact``)."""
        client = self._consumer._client  # noqa: SLF001 - no public "am I connected" in kafka-python
        if any(client.connected(b.node_id) for b in client.cluster.brokers()):
            self.last_contact = time.monotonic()
            return True
        return False

    def lost_position(self, position: int, end: int) -> bool:
        """Whether the record before ``position`` is gone, now that the log reports ``end``.

        The check behind a low end offset: tansu 0.6 reports the base offset of the last batch
        + 1, so only a raw fetch of ``position - 1`` tells a recreated log from a batched one.
        """
        from costream.connectors.kafka_raw import fetch_lenient

        if self._checked_end == (position, end):
            return False
        try:
            raw, _ = fetch_lenient(self._consumer, self.tp, position - 1, 1 << 20, 10_000)
        except Exception:  # noqa: BLE001 - OffsetOutOfRange: the record is gone
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

    def process(self, _: bytes) -> Iterator[_PartitionDescriptor]:  # noqa: D102
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


# --- restriction and watermark -------------------------------------------------------------


class _KafkaOffsetTracker(OffsetRestrictionTracker):
    """Offset tracker for one partition: only self-checkpoints (fraction 0) split it.

    A partition must be read in order by one reader, so runner-initiated splits are refused;
    the range may be unbounded (stop = ``sys.maxsize``).
    """

    def try_split(self, fraction_of_remainder: float) -> tuple[OffsetRange, OffsetRange] | None:  # noqa: D102
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def current_progress(self) -> RestrictionProgress:  # noqa: D102
        rng = self.current_restriction()
        done = 0 if self._current_position is None else self._current_position - rng.start + 1
        if rng.stop == UNBOUNDED:
            return RestrictionProgress(completed=float(done), remaining=1.0)
        return RestrictionProgress(
            completed=float(done), remaining=float(rng.stop - rng.start - done)
        )

    def is_bounded(self) -> bool:  # noqa: D102
        return self.current_restriction().stop != UNBOUNDED


class _OffsetRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, element: _PartitionDescriptor) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> RestrictionTracker:
        return _KafkaOffsetTracker(restriction)

    def split(
        self, element: _PartitionDescriptor, restriction: OffsetRange
    ) -> Iterator[OffsetRange]:
        yield restriction  # never split a partition: records must come out in offset order

    def restriction_size(self, element: _PartitionDescriptor, restriction: OffsetRange) -> float:
        if restriction.stop == UNBOUNDED:
            return 1.0
        return float(max(restriction.stop - restriction.start, 0))


class _PartitionWatermark(WatermarkEstimator):
    """Watermark of one partition: the newest record timestamp seen, plus an idle rule.

    State: ``(watermark, last_record_wall_s)``. When no record arrived for ``idle_s`` wall-clock
    seconds, the watermark advances to ``now - idle_s``, so a quiet partition stops holding back
    the others; this assumes record timestamps follow the wall clock (live capture). Records that
    arrive later with older timestamps are late data.
    """

    def __init__(self, state: tuple[Timestamp, float]) -> None:
        self._watermark, self._last_record_wall_s = state

    def observe_timestamp(self, timestamp: Timestamp) -> None:  # noqa: D102
        pass  # the reader calls record_seen() with the wall-clock time as well

    def current_watermark(self) -> Timestamp:  # noqa: D102
        return self._watermark

    def get_estimator_state(self) -> tuple[Timestamp, float]:  # noqa: D102
        return self._watermark, self._last_record_wall_s

    def record_seen(self, event_time: Timestamp, wall_s: float) -> None:
        """A record with ``event_time`` was emitted at ``wall_s``."""
        self._watermark = max(self._watermark, event_time)
        self._last_record_wall_s = wall_s

    def idle_seconds(self, wall_s: float) -> float:
        """Seconds since the last record (or since the read started)."""
        return wall_s - self._last_record_wall_s

    def advance_if_idle(self, wall_s: float, idle_s: float | None) -> bool:
        """Apply the idle rule; returns whether the watermark moved."""
        if idle_s is None or self.idle_seconds(wall_s) < idle_s:
            return False
        candidate = Timestamp.of(wall_s - idle_s)
        if candidate <= self._watermark:
            return False
        self._watermark = min(candidate, MAX_TIMESTAMP)
        return True


class _WatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(
        self, element: _PartitionDescriptor, restriction: OffsetRange
    ) -> tuple[Timestamp, float]:
        return MIN_TIMESTAMP, time.time()

    def create_watermark_estimator(
        self, estimator_state: tuple[Timestamp, float]
    ) -> _PartitionWatermark:
        return _PartitionWatermark(estimator_state)


_RESTRICTION_PARAM = beam.DoFn.RestrictionParam(_OffsetRestrictionProvider())
_WATERMARK_PARAM = beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider())


# --- the splittable DoFn -------------------------------------------------------------------


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition per element; see the module docstring for the delivery contract."""

    def __init__(self, cfg: _ReadConfig) -> None:
        self._cfg = cfg
        self._readers: dict[tuple[str, int], _PartitionReader] = {}
        self._records = Metrics.counter(_METRICS_NS, "records_read")
        self._bytes = Metrics.counter(_METRICS_NS, "bytes_read")
        self._commits = Metrics.counter(_METRICS_NS, "offset_commits")
        self._commit_failures = Metrics.counter(_METRICS_NS, "offset_commit_failures")
        self._dead_lettered = Metrics.counter(_METRICS_NS, "records_dead_lettered")
        self._skipped = Metrics.counter(_METRICS_NS, "records_skipped")
        self._replayed = Metrics.counter(_METRICS_NS, "records_replayed")
        self._dlq_producer: Any = None

    def setup(self) -> None:  # noqa: D102
        self._readers = {}
        self._dlq_producer = None

    def _dead_letter(self, desc: _PartitionDescriptor, f: _Fetched, reason: str) -> None:
        """Publish ``f`` as a dead letter (stage ``read``) and wait for it; else count a skip."""
        cfg = self._cfg
        where = f"{desc.topic}/{desc.partition}/{f.offset}"
        rec = codecs.dead_letter_record(
            f.key, f.value, [*f.headers, (HEADER_SOURCE, where.encode())], reason, "read"
        )
        if cfg.dead_letter_topic is None:
            self._skipped.inc()
            _LOG.error("ReadFromKafka: skipped the record at %s (no dead_letter_topic): %s",
                       where, reason)  # fmt: skip
            return
        try:
            rec = fit_dead_letter(rec, cfg.dead_letter_max_bytes)
        except RecordTooLargeError as err:
            self._skipped.inc()
            _LOG.error("ReadFromKafka: skipped the record at %s: %s; its dead letter does not "
                       "fit either: %s", where, reason, err)  # fmt: skip
            return
        if self._dlq_producer is None:
            from kafka import KafkaProducer

            settings = _producer_settings(cfg.client_config)
            check_security("ReadFromKafka (dead letters)", cfg.bootstrap_servers, settings)
            self._dlq_producer = KafkaProducer(
                bootstrap_servers=cfg.bootstrap_servers, acks="all",
                max_request_size=cfg.dead_letter_max_bytes, client_id="costream-read-dlq",
                **settings,
            )  # fmt: skip
        self._dlq_producer.send(
            cfg.dead_letter_topic, key=rec.key, value=rec.value, headers=rec.headers
        ).get(timeout=cfg.broker_timeout_s)
        self._dead_lettered.inc()
        _LOG.warning("ReadFromKafka: dead-lettered the record at %s to %r: %s", where,
                     cfg.dead_letter_topic, reason)  # fmt: skip

    def _check_broker(self, reader: _PartitionReader, position: int) -> None:
        """After an empty poll: fail when no broker answered for too long, or the log moved."""
        cfg, now = self._cfg, time.monotonic()
        if reader.connected() and now - reader.last_check < 1.0:
            return
        if now - reader.last_contact > cfg.broker_timeout_s:
            raise BrokerUnavailableError(
                f"ReadFromKafka: no broker of {','.join(cfg.bootstrap_servers)} answered for "
                f"{now - reader.last_contact:.0f} s (broker_timeout_s={cfg.broker_timeout_s:g}) "
                f"while {reader!r} waited for records at offset {position}."
            )
        if not reader.connected():
            return
        reader.last_check = now
        try:
            end = reader.end_offset()
        except Exception:  # noqa: BLE001 - a broker between restarts; the deadline above decides
            return
        if end < position and reader.lost_position(position, end):
            raise PartitionResetError(
                f"ReadFromKafka: {reader!r} is at offset {position} but the partition now ends at "
                f"offset {end}: the topic was deleted and recreated, or its log truncated. Records "
                "were lost or would be skipped; reset the group's offsets (or read from "
                "'earliest') once you know which."
            )

    def teardown(self) -> None:  # noqa: D102
        if self._dlq_producer is not None:
            self._dlq_producer.close(timeout=5)
            self._dlq_producer = None
        for reader in self._readers.values():
            try:
                reader.close()
            except Exception as err:  # noqa: BLE001 - teardown must not mask the real outcome
                _LOG.warning("ReadFromKafka: closing %r failed: %s", reader, err)
        self._readers = {}

    def _reader(self, desc: _PartitionDescriptor) -> _PartitionReader:
        key = (desc.topic, desc.partition)
        if key not in self._readers:
            self._readers[key] = _PartitionReader(self._cfg, desc.topic, desc.partition)
        return self._readers[key]

    def _commit(self, reader: _PartitionReader, next_offset: int) -> None:
        # Runs from bundle finalization: the runner has committed the bundle's output. A failed
        # commit is logged and counted, never raised: the next finalized bundle commits a later
        # offset, and until then a restart only re-reads (at-least-once).
        try:
            reader.commit(next_offset)
            self._commits.inc()
        except Exception as err:  # noqa: BLE001
            self._commit_failures.inc()
            _LOG.warning(
                "ReadFromKafka: committing offset %d with %r failed: %s", next_offset, reader, err
            )

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        desc: _PartitionDescriptor,
        # Beam passes the finalizer positionally and the tracker / estimator by keyword, so the
        # finalizer must come first or it lands on the tracker's position.
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: RestrictionTracker = _RESTRICTION_PARAM,
        watermark: _PartitionWatermark = _WATERMARK_PARAM,
    ) -> Iterator[TimestampedValue]:
        """Emit this partition's records from the restriction's start, then checkpoint."""
        cfg = self._cfg
        reader = self._reader(desc)
        rng = tracker.current_restriction()
        deadline = time.monotonic() + cfg.max_bundle_s
        emitted, last_offset, finished = 0, None, False
        while not finished and emitted < cfg.max_records_per_bundle:
            timeout = cfg.poll_timeout_ms if emitted == 0 else 0
            start = rng.start if last_offset is None else last_offset + 1
            records = reader.read(start, cfg.max_records_per_bundle - emitted, timeout)
            if not records:
                if emitted == 0:
                    self._check_broker(reader, start)
                break
            if records[0].offset < start:
                # The consumer fell back to auto_offset_reset: ``start`` is out of range.
                raise RuntimeError(
                    f"{reader!r} asked for offset {start} but the broker answered from offset "
                    f"{records[0].offset}, so offset {start} is out of range (was the topic "
                    "deleted and recreated?). Reset the group's offsets or read from 'earliest'."
                )
            for r in records:
                if not tracker.try_claim(r.offset):
                    finished = True  # past the end of a bounded range (max_records)
                    break
                replay = r.offset < desc.replay_until
                headers = [h for h in r.headers if h[0] != REPLAY_HEADER]
                if replay:
                    headers.append(Header(REPLAY_HEADER, b"1"))
                    self._replayed.inc()
                error = r.error
                if error is None and r.timestamp is not None and r.timestamp > _MAX_EVENT_MS:
                    error = (
                        f"record timestamp {r.timestamp} ms is beyond the largest event time "
                        f"({_MAX_EVENT_MS} ms)"
                    )
                if error is not None:
                    if not replay:  # a replayed record's dead letter was written before
                        self._dead_letter(desc, r, error)
                    emitted += 1
                    last_offset = r.offset
                    continue
                ts_ms = (
                    r.timestamp
                    if r.timestamp is not None and r.timestamp >= 0
                    else int(time.time() * 1000)
                )
                event_time = Timestamp(micros=ts_ms * 1000)
                yield TimestampedValue(
                    KafkaRecord(
                        r.key, r.value or b"", headers, desc.topic, desc.partition, r.offset,
                        ts_ms,
                    ),
                    event_time,
                )  # fmt: skip
                watermark.record_seen(event_time, time.time())
                emitted += 1
                last_offset = r.offset
                self._bytes.inc(len(r.value or b""))
            if last_offset is not None and last_offset >= rng.stop - 1:
                finished = True
            if time.monotonic() >= deadline:
                break
        if emitted:
            self._records.inc(emitted)
            if cfg.group_id is not None and last_offset + 1 > desc.replay_until:
                finalizer.register(functools.partial(self._commit, reader, last_offset + 1))
        if finished:
            return
        now = time.time()
        if (
            cfg.stop_after_idle_s is not None
            and watermark.idle_seconds(now) >= cfg.stop_after_idle_s
        ):
            _LOG.info(
                "ReadFromKafka: %r idle for %.1f s; stopping.", reader, watermark.idle_seconds(now)
            )
            tracker.try_claim(rng.stop)  # claiming the end marks the restriction done
            return
        watermark.advance_if_idle(now, cfg.idle_partition_s)
        # The FnApiRunner resumes deferred work at once, whatever the delay; the poll timeout
        # above is what keeps an idle partition from spinning.
        tracker.defer_remainder(
            Duration(seconds=cfg.poll_timeout_ms / 1000.0) if emitted == 0 else None
        )


# --- public transforms ---------------------------------------------------------------------


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
        stop_after_idle_s: end a partition's read after this many seconds without a record.
            The transform (and ``p.run()``) ends when every partition has ended.
        idle_partition_s: after this many quiet seconds a partition's watermark advances with
            the wall clock (``now - idle_partition_s``) so it does not hold back the others;
            ``None`` disables it (for replays of old data).
        max_records_per_bundle: records per partition per bundle (the duplicate bound, see the
            module docstring).
        max_bundle_s: wall-clock seconds a bundle may spend on one partition.
        poll_timeout_ms: how long one poll waits for data on a quiet partition.
        dead_letter_topic: where records that cannot become a ``KafkaRecord`` go, as dead
            letters with stage ``read``, the reason and ``costream.source`` =
            ``topic/partition/offset``: a batch kafka-python cannot parse (a header name that
            is not UTF-8: the batch is fetched raw, its good records are read as usual) or a
            timestamp beyond the largest event time. The reader waits for the broker's
            acknowledgement before it moves on. Without it (or when even the cut-to-fit dead
            letter cannot be written) such a record is skipped, logged and counted
            (``records_skipped``). Either way the offset advances, and is committed.
        dead_letter_max_bytes: largest dead letter the reader writes (see :func:`fit_dead_letter`).
        warm_restart_frames: with ``start="committed"``, re-read the records just before each
            partition's committed offset, enough for this many records of every stream (key)
            found there, and mark them with :data:`REPLAY_HEADER`: stateful stages rebuild each
            stream's state from them and emit nothing for them, so a restart without a
            checkpoint (the embedded runner, a fresh Flink job) is invisible in the output. Use
            the model's window n. 0 (the default) re-reads nothing. Replayed records are
            counted (``records_replayed``) and never committed or dead-lettered again.
        warm_restart_max_records: scan at most this many records back per partition.
        broker_timeout_s: a partition that got no answer from any broker for this long fails
            the read with :class:`BrokerUnavailableError` naming the servers and the position;
            shorter outages (a broker restart) are waited out. On every quiet poll (at most once
            a second) the reader also checks that the partition still reaches its position:
            when the log now ends below it (topic recreated, log truncated) the read fails with
            :class:`PartitionResetError` instead of skipping the new records.
        client_config: extra kafka-python ``KafkaConsumer`` settings, merged last (SASL, SSL,
            fetch sizes...). A value ``{"from_env": "NAME"}`` is read from the environment on
            the worker. The reader's dead-letter producer gets the connection settings. With a
            ``security_protocol`` other than ``PLAINTEXT``, a refused SASL/PLAIN password or a
            broker certificate that fails verification raises :class:`KafkaSecurityError` at
            once (see :func:`check_security`), not after kafka-python's 30 s of reconnects.

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
        self._cfg = _ReadConfig(
            servers, topic_list, start, group_id, parts, max_records,
            None if stop_after_idle_s is None else float(stop_after_idle_s),
            None if idle_partition_s is None else float(idle_partition_s),
            max_records_per_bundle, float(max_bundle_s), poll_timeout_ms, cfg,
            dead_letter_topic, dead_letter_max_bytes, float(broker_timeout_s),
            warm_restart_frames, warm_restart_max_records,
        )  # fmt: skip

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:  # noqa: D102
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "ResolvePartitions" >> beam.ParDo(_ResolvePartitions(self._cfg))
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadPartitions"
            >> beam.ParDo(_ReadPartitionFn(self._cfg)).with_output_types(KafkaRecord)
        )


def _positive(
    name: str, value: float | None, *, integer: bool = False, optional: bool = True
) -> None:
    if value is None and optional:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        tail = " or None" if optional else ""
        raise ValueError(f"{name} must be {what}{tail}, got {value!r}.")


FORMATS = ("json",)
"""Values of ``WriteToKafka(format=...)`` besides ``None`` (detections, dead letters, records)."""

_ROW_KINDS = {
    frozenset(Detection._fields): "detection",
    frozenset(DeadLetter._fields): "dead_letter",
    frozenset(KafkaRecord._fields): "kafka",
    frozenset(OutgoingRecord._fields): "record",
}
_KIND_OF_TYPE: dict[type, str | None] = {
    Detection: "detection",
    DeadLetter: "dead_letter",
    KafkaRecord: "kafka",
    OutgoingRecord: "record",
}


def _field_names(element: Any) -> tuple[str, ...] | None:
    """The field names of a schema'd row (a NamedTuple or a ``beam.Row``), else None."""
    fields = getattr(type(element), "_fields", None)
    if isinstance(fields, tuple):
        return fields
    if isinstance(element, beam.Row):
        return tuple(element.as_dict())
    return None


def _kind(element: Any) -> str | None:
    """``detection``, ``dead_letter``, ``kafka`` or ``record`` by the row's field names.

    By fields, not by class: Beam's ``RowCoder`` decodes rows into classes of its own.
    """
    cls = type(element)
    try:
        return _KIND_OF_TYPE[cls]
    except KeyError:
        pass
    fields = _field_names(element)
    kind = None if fields is None else _ROW_KINDS.get(frozenset(fields))
    if cls is not beam.Row:  # one answer per class; every beam.Row shares its class
        _KIND_OF_TYPE[cls] = kind
    return kind


def _json_value(value: Any, where: str) -> Any:
    """``value`` as JSON data (``where`` names it in errors).

    Rows and mappings become objects, sequences arrays, bytes base64 text, numpy scalars and
    arrays numbers and arrays, Beam timestamps RFC 3339 text.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Timestamp):
        return value.to_rfc3339()
    fields = _field_names(value)
    if fields is not None:
        return {name: _json_value(getattr(value, name), f"{where}.{name}") for name in fields}
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, Iterable):  # lists, tuples, Beam's iterables of grouped values
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"WriteToKafka(format='json'): field {where} holds a {type(value).__name__}, which has "
        "no JSON form; map it to a number, string, bytes, list or row first."
    )


_JSON_HEADERS = (Header(codecs.HEADER_CONTENT_TYPE, codecs.CT_JSON.encode("ascii")),)


def _json_record(element: Any, key: str | None) -> OutgoingRecord:
    """A row as one JSON object (fields in schema order), keyed by its field ``key``."""
    fields = _field_names(element)
    if fields is None and not isinstance(element, Mapping):
        raise TypeError(
            "WriteToKafka(format='json') writes schema'd rows (NamedTuples with annotations, "
            f"beam.Row) or mappings as JSON objects; got {type(element).__name__}."
        )
    obj = _json_value(element, "row")
    record_key: bytes | None = None
    if key is not None:
        if key not in obj:
            raise ValueError(
                f"WriteToKafka(key={key!r}): the row has no field {key!r}; its fields are "
                f"{', '.join(obj)}."
            )
        k = getattr(element, key) if fields is not None else element[key]
        if isinstance(k, bytes):
            record_key = k
        elif k is not None:
            record_key = (k if isinstance(k, str) else str(_json_value(k, key))).encode("utf-8")
    try:
        value = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as err:
        raise ValueError(
            f"WriteToKafka(format='json'): the row {obj!r:.200} is not JSON: {err}."
        ) from None
    return OutgoingRecord(record_key, value, list(_JSON_HEADERS))


def as_outgoing(
    element: Any,
    *,
    # Optional, not `str | None`: Beam 2.62 fails to type-check `beam.Map(as_outgoing)` on those
    format: Optional[str] = None,  # noqa: UP045
    key: Optional[str] = None,  # noqa: UP045
) -> OutgoingRecord:
    """The Kafka record ``WriteToKafka`` publishes for ``element``.

    With ``format=None``, by the element's fields (not its class, so rows Beam decoded count):

    * a detection row (:class:`~costream.connectors.codecs.Detection`): the ``DESIGN.md``
      detection JSON, key = stream id, the headers of
      :func:`~costream.connectors.codecs.detection_record`;
    * a dead-letter row (:class:`~costream.connectors.codecs.DeadLetter`): the original key,
      value and headers plus ``costream.error`` / ``costream.stage``
      (:func:`~costream.connectors.codecs.dead_letter_to_record`);
    * ``OutgoingRecord``, ``KafkaRecord`` or a plain ``(key, value)`` / ``(key, value,
      headers)`` tuple: as it is (``str`` keys are encoded as UTF-8).

    With ``format="json"``: any schema'd row (or mapping) as one compact JSON object, fields in
    schema order (nested rows as objects, bytes as base64 text), header ``content-type:
    application/json``, record key the value of field ``key`` (UTF-8 text; bytes as they are;
    no key when ``key`` is None).

    Raises:
        TypeError: an element of none of these kinds, or a bad key, value or header.
    """
    if format == "json":
        return _json_record(element, key)
    if format is not None:
        raise ValueError(
            f"format={format!r} is not valid; use None or one of {', '.join(FORMATS)}."
        )
    kind = _kind(element)
    if kind == "detection":
        return codecs.detection_record(element)
    if kind == "dead_letter":
        return codecs.dead_letter_to_record(element)
    if kind is not None:
        rec_key, value, headers = element.key, element.value, element.headers
    elif type(element) is tuple and len(element) in (2, 3):
        rec_key, value = element[0], element[1]
        headers = element[2] if len(element) == 3 else []
    elif _field_names(element) is not None:
        raise TypeError(
            f"WriteToKafka got a row with fields ({', '.join(_field_names(element) or ())}), "
            "which is not a detection, dead letter or record; give format='json' to write rows "
            "as JSON objects (and key=FIELD for the record key)."
        )
    else:
        raise TypeError(
            "WriteToKafka elements must be detection or dead-letter rows, OutgoingRecord, "
            "KafkaRecord, (key, value) or (key, value, headers), or rows with format='json'; "
            f"got {type(element).__name__}."
        )
    if isinstance(rec_key, str):
        rec_key = rec_key.encode("utf-8")
    if rec_key is not None and not isinstance(rec_key, bytes):
        raise TypeError(f"A record key must be bytes, str or None, got {type(rec_key).__name__}.")
    if not isinstance(value, bytes):
        raise TypeError(f"A record value must be bytes, got {type(value).__name__}.")
    headers = list(headers or [])
    for h in headers:
        if not (
            isinstance(h, tuple)
            and len(h) == 2
            and isinstance(h[0], str)
            and isinstance(h[1], bytes)
        ):
            raise TypeError(f"Headers must be (str, bytes) pairs, got {h!r}.")
    return OutgoingRecord(rec_key, value, headers)


class RecordTooLargeError(ValueError):
    """A record is larger than the writer's ``max_request_size`` and may not be truncated."""


def record_size(record: OutgoingRecord) -> int:
    """Bytes kafka-python counts against ``max_request_size`` for ``record`` alone.

    The upper bound of a one-record batch (v2 format, uncompressed): what the producer checks
    before sending, and at least the size a broker checks against ``message.max.bytes``.
    """
    from kafka.record.default_records import DefaultRecordBatchBuilder

    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, record.headers
    )


def fit_record(record: OutgoingRecord, max_request_size: int) -> OutgoingRecord:
    """``record`` itself when it fits in ``max_request_size``, else its value cut to fit.

    A cut record is :func:`~costream.connectors.codecs.truncated_record`: a prefix of the value
    (a few bytes short of the longest that fits, at most) plus ``costream.truncated``,
    ``costream.original_size`` and ``costream.original_sha256``.

    Raises:
        RecordTooLargeError: the key and headers alone, with an empty value, do not fit.
    """
    if record_size(record) <= max_request_size:
        return record
    keep = max_request_size - record_size(codecs.truncated_record(record, 0))
    if keep < 0:
        raise RecordTooLargeError(
            f"A record of {record_size(record)} bytes cannot be cut to fit max_request_size="
            f"{max_request_size}: its key and headers alone take {max_request_size - keep} bytes."
        )
    while True:  # the value's length varints shrink with it: at most a few bytes, two rounds
        cut = codecs.truncated_record(record, keep)
        over = record_size(cut) - max_request_size
        if over <= 0:
            return cut
        keep = max(0, keep - over)


def fit_dead_letter(record: OutgoingRecord, max_request_size: int) -> OutgoingRecord:
    """A dead letter cut to fit ``max_request_size``, saying what was cut.

    First the value (:func:`fit_record`); when the key and headers alone are too large, the
    original headers are dropped (``costream.dropped_headers`` says how many and how many
    bytes; ``costream.error`` is kept, cut to 1,000 bytes, with ``costream.stage`` and
    ``costream.source``); when the key alone is still too large, it is cut too
    (``costream.original_key_size`` and ``costream.original_key_sha256``).

    Raises:
        RecordTooLargeError: not even an empty dead letter fits (a tiny ``max_request_size``).
    """
    try:
        return fit_record(record, max_request_size)
    except RecordTooLargeError:
        pass
    keep = (codecs.HEADER_ERROR, codecs.HEADER_STAGE, HEADER_SOURCE)
    dropped = [(k, v) for k, v in record.headers if k not in keep]
    size = sum(len(k.encode()) + len(v) for k, v in dropped)
    headers = [
        (k, v[:1000] if k == codecs.HEADER_ERROR else v) for k, v in record.headers if k in keep
    ]
    headers.append((HEADER_DROPPED_HEADERS, f"{len(dropped)} headers, {size} bytes".encode()))
    try:
        return fit_record(OutgoingRecord(record.key, record.value, headers), max_request_size)
    except RecordTooLargeError:
        pass
    key = record.key or b""
    headers += [
        (HEADER_ORIGINAL_KEY_SIZE, str(len(key)).encode()),
        (HEADER_ORIGINAL_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()),
    ]
    empty = codecs.truncated_record(OutgoingRecord(b"", record.value, headers), 0)
    room = max_request_size - record_size(empty) - 8  # the key's length varint grows with it
    if room < 0:
        raise RecordTooLargeError(
            f"Not even an empty dead letter fits max_request_size={max_request_size}."
        )
    return fit_record(OutgoingRecord(key[:room], record.value, headers), max_request_size)


def _show_key(key: bytes | None) -> str:
    return "None" if key is None else repr(key[:64]) + ("..." if len(key) > 64 else "")


class _WriteConfig(NamedTuple):
    servers: list[str]
    topic: str
    acks: Any
    retries: int
    flush_timeout_s: float
    max_request_size: int
    oversize: Oversize
    client_config: dict[str, Any]
    compression_type: str | None = None
    dead_letter_topic: str | None = None
    format: str | None = None
    key: str | None = None


_RESEND_ROUNDS = 3
"""Times finish_bundle recreates the producer and resends what was not acknowledged."""


class _WriteFn(beam.DoFn):
    def __init__(self, cfg: _WriteConfig) -> None:
        self._cfg = cfg
        self._producer: Any = None
        self._pending: list[tuple[Any, str, OutgoingRecord, int | None]] = []
        self._written = Metrics.counter(_METRICS_NS, "records_written")
        self._truncated = Metrics.counter(_METRICS_NS, "records_truncated")
        self._truncated_bytes = Metrics.counter(_METRICS_NS, "bytes_truncated")
        self._dead_lettered = Metrics.counter(_METRICS_NS, "records_dead_lettered")
        self._skipped = Metrics.counter(_METRICS_NS, "records_skipped")
        self._resent = Metrics.counter(_METRICS_NS, "records_resent")
        self._producers_recreated = Metrics.counter(_METRICS_NS, "producers_recreated")
        self._replay_dropped = Metrics.counter(_METRICS_NS, "records_replay_dropped")

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        cfg = self._cfg
        settings = resolve_client_config(cfg.client_config)
        check_security("WriteToKafka", cfg.servers, settings)
        return KafkaProducer(
            bootstrap_servers=cfg.servers,
            acks=cfg.acks,
            retries=cfg.retries,
            max_request_size=cfg.max_request_size,
            compression_type=cfg.compression_type,
            client_id=f"costream-write-{cfg.topic}",
            # send() blocks for metadata at most this long (kafka-python's default is 60 s)
            **{"max_block_ms": int(cfg.flush_timeout_s * 1000), **settings},
        )  # fmt: skip

    def setup(self) -> None:  # noqa: D102
        self._producer = self._new_producer()

    def start_bundle(self) -> None:  # noqa: D102
        self._pending = []

    def _too_large(self, rec: OutgoingRecord, size: int) -> str:
        return (
            f"WriteToKafka: a record for topic {self._cfg.topic!r} (key {_show_key(rec.key)}) is "
            f"{size} bytes serialized, above max_request_size={self._cfg.max_request_size}."
        )

    def _sized(self, rec: OutgoingRecord) -> OutgoingRecord | None:
        """``rec``, its truncated form, or ``None`` once it went to the dead-letter topic."""
        cfg = self._cfg
        size = record_size(rec)
        if size <= cfg.max_request_size:
            return rec
        if cfg.oversize == "dead_letter":
            self._to_dead_letters(rec, self._too_large(rec, size), cfg.max_request_size)
            return None
        if cfg.oversize == "error":
            raise RecordTooLargeError(
                f"{self._too_large(rec, size)} Raise max_request_size together with the "
                "broker's message.max.bytes (or the topic's max.message.bytes), or make the "
                "record smaller, or give a dead_letter_topic; WriteDeadLetters truncates "
                "oversized dead letters instead."
            )
        try:
            cut = fit_dead_letter(rec, cfg.max_request_size)
        except RecordTooLargeError as err:
            self._skipped.inc()
            _LOG.error("WriteToKafka: skipped the record for topic %r (key %s): it cannot be "
                       "cut to fit: %s", cfg.topic, _show_key(rec.key), err)  # fmt: skip
            return None
        self._truncated.inc()
        self._truncated_bytes.inc(len(rec.value) - len(cut.value))
        _LOG.warning(
            "WriteToKafka: the record for topic %r (key %s) is %d bytes serialized, above "
            "max_request_size=%d; it was cut to fit (value %d -> %d bytes, headers %s, %s, %s).",
            cfg.topic, _show_key(rec.key), size, cfg.max_request_size, len(rec.value),
            len(cut.value), codecs.HEADER_TRUNCATED, codecs.HEADER_ORIGINAL_SIZE,
            codecs.HEADER_ORIGINAL_SHA256,
        )  # fmt: skip
        return cut

    def _to_dead_letters(self, rec: OutgoingRecord, reason: str, limit: int) -> None:
        """Queue ``rec`` as a dead letter (stage ``write``) cut to ``limit``, or count a skip."""
        cfg = self._cfg
        assert cfg.dead_letter_topic is not None
        try:
            dead = fit_dead_letter(
                codecs.dead_letter_record(rec.key, rec.value, rec.headers, reason, "write"), limit
            )
        except RecordTooLargeError as err:
            self._skipped.inc()
            _LOG.error("WriteToKafka: skipped a record for %r (%s); its dead letter does not fit "
                       "either: %s", cfg.topic, reason, err)  # fmt: skip
            return
        self._dead_lettered.inc()
        _LOG.warning("WriteToKafka: %s It went to the dead-letter topic %r.", reason,
                     cfg.dead_letter_topic)  # fmt: skip
        self._send(cfg.dead_letter_topic, dead, None)

    def _send(self, topic: str, rec: OutgoingRecord, ts_ms: int | None) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            future = self._producer.send(
                topic, value=rec.value, key=rec.key, headers=rec.headers, timestamp_ms=ts_ms
            )
        except KafkaTimeoutError as err:
            raise BrokerUnavailableError(
                f"WriteToKafka: no broker of {','.join(self._cfg.servers)} gave the metadata of "
                f"topic {topic!r} within {self._cfg.flush_timeout_s:g} s (flush_timeout_s): {err}"
            ) from err
        self._pending.append((future, topic, rec, ts_ms))

    def process(self, element: Any, ts: Timestamp = beam.DoFn.TimestampParam) -> None:  # noqa: D102
        out = as_outgoing(element, format=self._cfg.format, key=self._cfg.key)
        if any(k == REPLAY_HEADER for k, _ in out.headers):
            # built from a record re-read to rebuild state: it was written before the restart
            self._replay_dropped.inc()
            return
        rec = self._sized(out)
        if rec is None:
            return
        if self._cfg.format is None and _kind(element) == "kafka":
            ts_ms: int | None = element.timestamp_ms
        elif MIN_TIMESTAMP < ts < MAX_TIMESTAMP and ts.micros >= 0:
            ts_ms = ts.micros // 1000  # keep the event time of what we write (e.g. capture time)
        else:
            ts_ms = None
        self._send(self._cfg.topic, rec, ts_ms)

    def finish_bundle(self) -> None:  # noqa: D102
        from kafka.errors import MessageSizeTooLargeError

        # The bundle succeeds only if every record was acknowledged. What the broker refused as
        # too large goes to the dead-letter topic when there is one; what failed otherwise (a
        # broker restart: disconnects, UnknownProducerId, timeouts) is resent with a new
        # producer, a few rounds; then raise, so the runner retries the bundle (and upstream
        # offsets are not committed). A resent record may be a duplicate (counted).
        cfg = self._cfg
        total = 0
        for round_ in range(_RESEND_ROUNDS + 1):
            self._producer.flush(timeout=cfg.flush_timeout_s)
            pending, self._pending = self._pending, []
            failed = [p for p in pending if not p[0].is_done or p[0].failed()]
            total += len(pending) - len(failed)
            too_large = [p for p in failed
                         if p[0].is_done and isinstance(p[0].exception, MessageSizeTooLargeError)]  # fmt: skip
            if too_large and cfg.dead_letter_topic is not None:
                for _, topic, rec, _ in too_large:
                    reason = (f"WriteToKafka: the broker refused a record of {record_size(rec)} "
                              f"bytes for topic {topic!r} as too large.")  # fmt: skip
                    self._to_dead_letters(rec, reason, record_size(rec) // 2)
                failed = [p for p in failed if p not in too_large]
            if not failed and not self._pending:
                break
            if not failed:
                continue  # flush the dead letters just queued
            first = failed[0][0].exception if failed[0][0].is_done else None
            if isinstance(first, MessageSizeTooLargeError) or round_ == _RESEND_ROUNDS:
                self._pending = []
                raise self._failure(len(failed), len(pending), first)
            _LOG.warning("WriteToKafka: %d of %d records to %r were not acknowledged (%s); "
                         "resending them with a new producer.", len(failed), len(pending),
                         cfg.topic, first or "timed out")  # fmt: skip
            self._producer.close(timeout=1)
            self._producer = self._new_producer()
            self._producers_recreated.inc()
            self._resent.inc(len(failed))
            for _, topic, rec, ts_ms in failed:
                self._send(topic, rec, ts_ms)
        self._written.inc(total)

    def _failure(self, failed: int, n: int, first: Any) -> Exception:
        from kafka.errors import MessageSizeTooLargeError

        cfg = self._cfg
        if first is None:
            return BrokerUnavailableError(
                f"WriteToKafka: no broker of {','.join(cfg.servers)} acknowledged {failed} of {n} "
                f"records to topic {cfg.topic!r} within flush_timeout_s={cfg.flush_timeout_s:g} "
                f"s ({_RESEND_ROUNDS} resends with a new producer included)."
            )
        hint = (
            " The broker refused a record as too large: its limit (message.max.bytes, or the "
            f"topic's max.message.bytes) is below max_request_size={cfg.max_request_size}; "
            "set max_request_size to the broker's limit, or give a dead_letter_topic."
            if isinstance(first, MessageSizeTooLargeError)
            else ""
        )
        return RuntimeError(
            f"WriteToKafka: {failed} of {n} records to topic {cfg.topic!r} were not "
            f"acknowledged (first error: {first}).{hint}"
        )

    def teardown(self) -> None:  # noqa: D102
        if self._producer is not None:
            self._producer.close(timeout=self._cfg.flush_timeout_s)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Publish elements to one topic; a bundle succeeds only once the broker acknowledged it.

    Elements (see :func:`as_outgoing` for exactly what each becomes):

    * ``format=None`` (the default): detection rows (``ContinualInference``'s output: the
      ``DESIGN.md`` detection JSON, key = stream id), dead-letter rows (the original record
      plus ``costream.error`` / ``costream.stage``), :class:`OutgoingRecord`, ``KafkaRecord``,
      ``(key, value)`` or ``(key, value, headers)``. Any other schema'd row is refused, at
      construction when the input's type says so, else at run time, asking for a ``format``.
    * ``format="json"``: any schema'd row (``beam.Row``, a NamedTuple with annotations, what
      Beam YAML's ``MapToFields`` / ``Combine`` / ``Sql`` produce) as one JSON object; ``key``
      names the field whose value is the record key.

    The record timestamp is the ``KafkaRecord`` timestamp or else the element's event time
    (when it has a real one); partitions follow the key.

    Every record is sized (:func:`record_size`) before it is sent. One above
    ``max_request_size`` raises :class:`RecordTooLargeError` (``oversize="error"``, the
    default: the bundle fails, nothing is dropped) or is published with its value cut to fit and
    marked by ``costream.truncated``, ``costream.original_size`` and
    ``costream.original_sha256`` (``oversize="truncate"``, what :class:`WriteDeadLetters` does;
    logged and counted in the ``costream.kafka`` metrics ``records_truncated`` and
    ``bytes_truncated``).

    Args:
        bootstrap_servers: ``"host:port"``, comma-separated, or a list.
        topic: destination topic (must exist on brokers that do not auto-create topics).
        acks: ``0``, ``1`` or ``"all"``.
        retries: producer retries per record on retriable errors.
        flush_timeout_s: how long ``finish_bundle`` waits for acknowledgements.
        max_request_size: largest serialized record in bytes (kafka-python's producer setting,
            default 1 MiB). Keep it at or below the broker's ``message.max.bytes`` (Kafka's
            default is 1 MiB + 12 bytes) and the topic's ``max.message.bytes``.
        oversize: what a record above ``max_request_size`` gets: ``"error"`` (the default
            without a dead-letter topic), ``"truncate"``, or ``"dead_letter"`` (the default
            with one).
        dead_letter_topic: where a record that cannot be published goes, as a dead letter
            (stage ``write``, cut to fit with :func:`fit_dead_letter`): one above
            ``max_request_size``, or one the broker refused as too large (then cut to half its
            size). A dead letter that cannot be cut to fit is skipped, logged and counted
            (``records_skipped``).
        compression_type: ``None`` (uncompressed) or one of ``COMPRESSION_TYPES``: the codec of
            the record batches written. Sizes are checked uncompressed (an upper bound).
        client_config: extra kafka-python ``KafkaProducer`` settings, merged last;
            ``{"from_env": "NAME"}`` values are read from the worker's environment. SASL/SSL
            failures raise :class:`KafkaSecurityError` as in :class:`ReadFromKafka`.
        format: ``None`` (detections, dead letters and records, as above) or ``"json"``
            (:data:`FORMATS`): rows as JSON objects.
        key: with ``format="json"``, the field whose value is the record key (text as UTF-8,
            bytes as they are); ``None`` writes records without a key.

    Example:
        >>> _ = (detections  # doctest: +SKIP
        ...      | beam.Filter(lambda d: d.warm and d.top_score > 0.9)
        ...      | WriteToKafka("127.0.0.1:9092", "alerts"))
        >>> _ = per_minute_counts | WriteToKafka(  # doctest: +SKIP
        ...     "127.0.0.1:9092", "counts", format="json", key="stream_id")
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        acks: int | str = "all",
        retries: int = 5,
        flush_timeout_s: float = 60.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        oversize: Oversize | None = None,
        compression_type: str | None = None,
        dead_letter_topic: str | None = None,
        client_config: Mapping[str, Any] | None = None,
        format: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__()
        if format is not None and format not in FORMATS:
            raise ValueError(
                f"format={format!r} is not valid; use None (detections, dead letters and "
                f"records) or one of {', '.join(map(repr, FORMATS))}."
            )
        if key is not None and (format is None or not isinstance(key, str) or not key):
            raise ValueError(
                f"key={key!r} names the row field that becomes the record key; it takes a field "
                "name and format='json' (detections are keyed by stream id already)."
            )
        if oversize is None:
            oversize = "error" if dead_letter_topic is None else "dead_letter"
        if oversize == "dead_letter" and not dead_letter_topic:
            raise ValueError("oversize='dead_letter' needs a dead_letter_topic.")
        servers = _bootstrap_list(bootstrap_servers)
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty string, got {topic!r}.")
        if acks not in (0, 1, "all", -1):
            raise ValueError(f"acks={acks!r} is not valid; use 0, 1 or 'all'.")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}.")
        _positive("flush_timeout_s", flush_timeout_s, optional=False)
        _positive("max_request_size", max_request_size, integer=True, optional=False)
        if oversize not in OVERSIZE_POLICIES:
            raise ValueError(
                f"oversize={oversize!r} is not valid; use {' or '.join(map(repr, OVERSIZE_POLICIES))}."
            )
        _check_codec(compression_type)
        cfg = _check_client_config(client_config, _producer_config(), _WRITE_RESERVED)
        self._fn = _WriteFn(
            _WriteConfig(servers, topic, acks, retries, float(flush_timeout_s), max_request_size,
                         oversize, cfg, compression_type, dead_letter_topic, format, key)
        )  # fmt: skip

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:  # noqa: D102
        _check_input_rows(pcoll.element_type, self._fn._cfg)
        return pcoll | "Produce" >> beam.ParDo(self._fn)


def _schema_fields(element_type: Any) -> list[str] | None:
    """The field names of a schema'd element type, or None (``Any``, unions, plain types)."""
    from apache_beam.typehints import schemas

    try:
        return [name for name, _ in schemas.named_fields_from_element_type(element_type)]
    except (TypeError, ValueError, KeyError, IndexError):
        return None


def _check_input_rows(element_type: Any, cfg: _WriteConfig) -> None:
    """Refuse, at construction, rows the writer cannot write with its ``format`` and ``key``."""
    fields = _schema_fields(element_type)
    if fields is None:
        return  # checked per element
    if cfg.format is None and frozenset(fields) not in _ROW_KINDS:
        raise ValueError(
            f"WriteToKafka to {cfg.topic!r}: the input rows have fields ({', '.join(fields)}), "
            "which are not a detection, dead letter or record; give format='json' to write "
            "them as JSON objects (and key=FIELD for the record key)."
        )
    if cfg.key is not None and cfg.key not in fields:
        raise ValueError(
            f"WriteToKafka to {cfg.topic!r}: key={cfg.key!r} is not a field of the input rows; "
            f"their fields are {', '.join(fields)}."
        )


class WriteDeadLetters(WriteToKafka):
    """:class:`WriteToKafka` for dead letters: an oversized record is truncated, never refused.

    Elements: :class:`~costream.connectors.codecs.DeadLetter` rows (every costream
    ``dead_letter`` output), each published as
    :func:`~costream.connectors.codecs.dead_letter_to_record`, or records as in
    :class:`WriteToKafka`. A dead letter is the original record plus ``costream.error`` /
    ``costream.stage``, so an input near the broker's limit no longer fits once the reason is
    added. Refusing it would fail the bundle again on every retry; this writer publishes it
    with the value cut to fit and
    ``costream.truncated`` = ``true``, ``costream.original_size`` and ``costream.original_sha256``
    (the whole value's length and SHA-256), logs a warning and counts it (``records_truncated``,
    ``bytes_truncated``). Only a record whose key and headers alone exceed ``max_request_size``
    raises :class:`RecordTooLargeError`. Arguments as :class:`WriteToKafka`.

    Example (what happens to a dead letter of a 1 MiB input, see :func:`fit_record`):
        >>> big = codecs.dead_letter_record(b"mic", b"x" * (1 << 20), [], "too large", "decode")
        >>> cut = fit_record(big, DEFAULT_MAX_REQUEST_SIZE)
        >>> len(cut.value), [(k, v) for k, v in cut.headers if k == "costream.original_size"]
        (1048293, [('costream.original_size', b'1048576')])
        >>> _ = dead_letters | WriteDeadLetters("127.0.0.1:9092", "dlq")  # doctest: +SKIP
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        *,
        acks: int | str = "all",
        retries: int = 5,
        flush_timeout_s: float = 60.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        compression_type: str | None = None,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            bootstrap_servers, topic, acks=acks, retries=retries,
            flush_timeout_s=flush_timeout_s, max_request_size=max_request_size,
            oversize="truncate", compression_type=compression_type, client_config=client_config,
        )  # fmt: skip
