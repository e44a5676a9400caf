"""The security check before a Kafka client starts: TLS and SASL/PLAIN, one clear error.

kafka-python answers a refused password or an untrusted certificate with 30 s of reconnects
and a bare timeout; :func:`check_security` tries the bootstrap servers once and raises
:class:`~costream.connectors.kafka.errors.KafkaSecurityError` saying what failed.
"""

import socket
import ssl
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from costream.connectors.kafka.errors import KafkaSecurityError

__all__ = ["SECURITY_CHECK_TIMEOUT_S", "check_security"]


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
