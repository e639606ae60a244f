"""The key service's audit log: one JSON line per action, success or failure.

Job: record who did what to which key, and how it ended, for every call of
:class:`~kinko.keys.service.KeyService` (including refused ones: a 401 or 403 is audited too)
and for the service's own scheduled work.

A record (:class:`AuditRecord`) holds: ``timestamp`` (the service's clock, ISO 8601 UTC),
``action`` (Key Protect's activity name, e.g. ``kms.secrets.wrap``), ``outcome``
(``success`` or ``failure``), ``reason`` (the Key Protect reason code of a failure),
``who`` (the token's name) and ``tokenId`` (12 hex characters of the token's hash),
``instance``, ``keyId``, ``keyVersion``, ``resource`` (an alias, key ring id or registration
CRN, when the action names one) and ``correlationId``.

Invariants:

- Never key material, plaintext, ciphertext, AAD, tokens or error messages: the record type
  has no field that could hold them, and the service fills it with ids only.
- :class:`FileAuditSink` appends one line per record and flushes and fsyncs it before
  returning, so an acknowledged action's record survives a crash. A failure to write raises
  :class:`~kinko.errors.UnavailableError`: an action whose record cannot be written has been
  done but is reported as failed, never silently unaudited.
- :class:`MemoryAuditSink` is the twin for tests; both render records with
  :meth:`AuditRecord.to_json`.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, Protocol

from kinko.errors import UnavailableError

Outcome = Literal["success", "failure"]
SUCCESS: Final = "success"
FAILURE: Final = "failure"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited action. Every field is an id, a name, a code or a time."""

    timestamp: datetime
    action: str
    outcome: Outcome
    who: str
    instance: str | None = None
    token_id: str | None = None
    key_id: str | None = None
    key_version: str | None = None
    resource: str | None = None
    reason: str | None = None
    correlation_id: str | None = None

    def to_json(self) -> str:
        """The record as one line of JSON (no newline), keys in a fixed order."""
        doc = {
            "timestamp": self.timestamp.astimezone(UTC).isoformat(),
            "action": self.action,
            "outcome": self.outcome,
            "reason": self.reason,
            "who": self.who,
            "tokenId": self.token_id,
            "instance": self.instance,
            "keyId": self.key_id,
            "keyVersion": self.key_version,
            "resource": self.resource,
            "correlationId": self.correlation_id,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


class AuditSink(Protocol):
    """Where audit records go."""

    def record(self, record: AuditRecord) -> None:
        """Writes one record durably. Raises UnavailableError."""
        ...


@dataclass(slots=True)
class MemoryAuditSink:
    """The in-memory twin: keeps every record, in order."""

    records: list[AuditRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, record: AuditRecord) -> None:
        """Appends the record. Raises nothing."""
        with self._lock:
            self.records.append(record)

    def lines(self) -> list[str]:
        """Every record as the JSON line a file sink would write."""
        with self._lock:
            return [r.to_json() for r in self.records]


class FileAuditSink:
    """Appends JSON lines to ``path`` (created 0600 if missing), fsynced per record.

    Raises UnavailableError (the file cannot be opened).
    """

    __slots__ = ("_fd", "_lock", "_path")

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UnavailableError(
                f"cannot open the audit log {self._path}: {exc.strerror}"
            ) from exc

    @property
    def path(self) -> Path:
        """The audit log file."""
        return self._path

    def record(self, record: AuditRecord) -> None:
        """Appends one line and fsyncs it. Raises UnavailableError."""
        line = (record.to_json() + "\n").encode("ascii")
        with self._lock:
            try:
                written = 0
                while written < len(line):
                    written += os.write(self._fd, line[written:])
                os.fsync(self._fd)
            except OSError as exc:
                raise UnavailableError(
                    f"cannot write the audit log {self._path}: {exc.strerror}"
                ) from exc

    def close(self) -> None:
        """Closes the file. Raises nothing."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> FileAuditSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
