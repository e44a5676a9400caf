"""Dead letters of the stream contract: the :class:`DeadLetter` row, reasons, stages, wire form.

A record that cannot be processed is data, not an error: it becomes a dead letter that carries
the original key, value and headers, the reason (one line, at most :data:`MAX_ERROR_CHARS`
characters: :func:`dead_letter_reason`) and the stage that refused it (one of :data:`STAGES`).
Stages build :class:`DeadLetter` rows (:func:`dead_letter`); on the dead-letter topic each is
:func:`dead_letter_record`: the original record plus the ``costream.error`` and
``costream.stage`` headers. One too large for the broker is cut to fit by
:func:`~costream.connectors.contract.sizing.fit_dead_letter`. See ``docs/stream-contract.md``.

Example:
    >>> rec = dead_letter_record(b"cam-1", b"junk", [("content-type", b"image/png")],
    ...                          ValueError("not an image"), "decode")
    >>> [k for k, _ in rec.headers], dict(rec.headers)["costream.error"]
    (['content-type', 'costream.error', 'costream.stage'], b'ValueError: not an image')
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional

from costream.connectors.contract.errors import CodecError
from costream.connectors.contract.frames import OutgoingRecord
from costream.connectors.contract.headers import HEADER_ERROR, HEADER_STAGE, Header, as_headers

__all__ = [
    "MAX_ERROR_CHARS",
    "STAGES",
    "DeadLetter",
    "check_stage",
    "dead_letter",
    "dead_letter_reason",
    "dead_letter_record",
    "dead_letter_to_record",
]

STAGES = ("read", "decode", "features", "inference", "write")
"""Valid values of the ``costream.stage`` dead-letter header."""
MAX_ERROR_CHARS = 1000


class DeadLetter(NamedTuple):
    """A bad input as a row: the original record, why it failed and where (a Beam schema).

    ``key``, ``value`` and ``headers`` are the input record's, untouched (a record re-read to
    rebuild state keeps its ``costream.replay`` header, so writers drop its dead letter as they
    drop its detection); ``error`` is one line of at most ``MAX_ERROR_CHARS`` characters;
    ``stage`` is one of :data:`STAGES`. :func:`dead_letter_to_record` is its wire form, the
    record ``WriteDeadLetters`` publishes. Build it with :func:`dead_letter`.
    """

    key: Optional[bytes]  # noqa: UP045 - Beam 2.62 reads `bytes | None` as Any, not nullable
    value: bytes
    headers: Sequence[Header]
    error: str
    stage: str


def dead_letter_reason(error: str | BaseException) -> str:
    """The one-line dead-letter reason of ``error`` (a sentence, or an exception)."""
    if isinstance(error, BaseException):
        reason = str(error) or type(error).__name__
        if not isinstance(error, CodecError):
            reason = f"{type(error).__name__}: {reason}"
    else:
        reason = error
    return " ".join(reason.split())[:MAX_ERROR_CHARS] or "unknown error"


def check_stage(stage: str) -> None:
    """Raise ``ValueError`` listing :data:`STAGES` when ``stage`` is not one of them."""
    if stage not in STAGES:
        raise ValueError(
            f"Dead-letter stage {stage!r} is not valid; use one of {', '.join(STAGES)}."
        )


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    error: str | BaseException,
    stage: str,
) -> DeadLetter:
    """The :class:`DeadLetter` row of a bad input: its record as it came, plus the reason.

    The reason is what :func:`dead_letter_record` writes to ``costream.error``; ``stage`` must
    be one of :data:`STAGES`.
    """
    check_stage(stage)
    return DeadLetter(
        None if key is None else bytes(key),
        b"" if value is None else bytes(value),
        as_headers(headers),
        dead_letter_reason(error),
        stage,
    )


def dead_letter_record(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    error: str | BaseException,
    stage: str,
) -> OutgoingRecord:
    """The dead-letter record for a bad input: original key, value and headers plus the reason.

    ``costream.error`` holds the reason as one line of UTF-8 (at most ``MAX_ERROR_CHARS``
    characters); ``costream.stage`` is one of :data:`STAGES`. Earlier ``costream.error`` /
    ``costream.stage`` headers are replaced, every other header is kept in order.
    """
    check_stage(stage)
    kept = [Header(k, bytes(v)) for k, v in headers if k not in (HEADER_ERROR, HEADER_STAGE)]
    kept += [
        Header(HEADER_ERROR, dead_letter_reason(error).encode("utf-8")),
        Header(HEADER_STAGE, stage.encode("ascii")),
    ]
    return OutgoingRecord(key, b"" if value is None else bytes(value), kept)


def dead_letter_to_record(dead: DeadLetter) -> OutgoingRecord:
    """The dead-letter topic's record of a :class:`DeadLetter` row (or any row with its fields).

    Exactly :func:`dead_letter_record` of the row's key, value, headers, error and stage.
    """
    return dead_letter_record(dead.key, dead.value, dead.headers, dead.error, dead.stage)
