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
- :class:`FileAuditSink` writes each record to the file (one ``write``) before returning, so
  an acknowledged action's record survives a crash of kinko. Reaching the disk is a choice:
  ``sync="always"`` fsyncs every record before returning; the default ``sync="interval"``
  fsyncs at most every ``interval`` seconds (50 ms) from a background thread and on close, as
  the Linux audit daemon does by default (``flush = INCREMENTAL_ASYNC``): a power loss or
  kernel crash may lose the last 50 ms of records, and a wrap is not held up by a disk flush
  (ADR 7). A failure to write raises :class:`~kinko.errors.UnavailableError`, and so does the
  next record after a failed background fsync: an action whose record cannot be written has
  been done but is reported as failed, never silently unaudited.
- :class:`MemoryAuditSink` is the twin for tests; both render records with
  :meth:`AuditRecord.to_json`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, NamedTuple, Protocol

from kinko.errors import InvalidArgument, UnavailableError

Outcome = Literal["success", "failure"]
SyncMode = Literal["interval", "always"]
#: How long a record may wait for its fsync with ``sync="interval"``.
DEFAULT_SYNC_INTERVAL = 0.05
SUCCESS: Final = "success"
FAILURE: Final = "failure"


class AuditRecord(NamedTuple):
    """One audited action. Every field is an id, a name, a code or a time.

    A named tuple rather than a frozen dataclass: every key service call makes one, and a
    frozen dataclass sets each of its eleven fields through ``object.__setattr__`` (three
    times the cost of building the tuple).
    """

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
        """The record as one line of JSON (no newline), keys in a fixed order.

        Written by hand, character for character what ``json.dumps(doc, separators=(",", ":"),
        ensure_ascii=True)`` of the fields gives (each string escaped by json's own encoder):
        a record is written on every key service call, and json.dumps of a dict costs several
        times more.
        """
        # The optional fields are written inline, not through a helper: seven function calls
        # fewer per record.
        s = _string
        reason, token_id, instance = self.reason, self.token_id, self.instance
        key_id, key_version, resource = self.key_id, self.key_version, self.resource
        correlation_id = self.correlation_id
        return (
            f'{{"timestamp":{s(self.timestamp.astimezone(UTC).isoformat())},'
            f'"action":{s(self.action)},"outcome":{s(self.outcome)},'
            f'"reason":{"null" if reason is None else s(reason)},"who":{s(self.who)},'
            f'"tokenId":{"null" if token_id is None else s(token_id)},'
            f'"instance":{"null" if instance is None else s(instance)},'
            f'"keyId":{"null" if key_id is None else s(key_id)},'
            f'"keyVersion":{"null" if key_version is None else s(key_version)},'
            f'"resource":{"null" if resource is None else s(resource)},'
            f'"correlationId":{"null" if correlation_id is None else s(correlation_id)}}}'
        )


_string: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


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
    """Appends JSON lines to ``path`` (created 0600 if missing).

    ``sync``: ``"interval"`` (default) fsyncs from a background thread at most every
    ``interval`` seconds while records are pending; ``"always"`` fsyncs each record before
    :meth:`record` returns. Raises UnavailableError (the file cannot be opened),
    InvalidArgument (an unknown ``sync`` or an interval that is not positive).
    """

    __slots__ = (
        "_error",
        "_fd",
        "_flusher",
        "_interval",
        "_lock",
        "_path",
        "_pending",
        "_stop",
        "_sync",
    )

    def __init__(
        self, path: Path, *, sync: SyncMode = "interval", interval: float = DEFAULT_SYNC_INTERVAL
    ) -> None:
        if sync not in ("interval", "always"):
            raise InvalidArgument(f"audit sync: expected 'interval' or 'always', got {sync!r}")
        if not interval > 0:
            raise InvalidArgument(f"audit sync interval: expected > 0 seconds, got {interval}")
        self._path = Path(path)
        self._sync = sync
        self._interval = interval
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._error: str | None = None
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UnavailableError(
                f"cannot open the audit log {self._path}: {exc.strerror}"
            ) from exc
        self._flusher: threading.Thread | None = None
        if sync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop, name="kinko-audit-fsync", daemon=True
            )
            self._flusher.start()

    @property
    def path(self) -> Path:
        """The audit log file."""
        return self._path

    @property
    def sync(self) -> SyncMode:
        """When records reach the disk: ``"interval"`` or ``"always"``."""
        return self._sync

    def record(self, record: AuditRecord) -> None:
        """Appends one line (and fsyncs it with ``sync="always"``). Raises UnavailableError."""
        line = (record.to_json() + "\n").encode("ascii")
        with self._lock:
            if self._error is not None:
                raise UnavailableError(f"cannot sync the audit log {self._path}: {self._error}")
            try:
                written = 0
                while written < len(line):
                    written += os.write(self._fd, line[written:])
                if self._sync == "always":
                    os.fsync(self._fd)
            except OSError as exc:
                raise UnavailableError(
                    f"cannot write the audit log {self._path}: {exc.strerror}"
                ) from exc
        if self._sync == "interval" and not self._pending.is_set():
            # Already set: the flusher has not cleared it yet, so its next fsync, which comes
            # after that clear, covers this line too. Setting it again would only cost a lock.
            self._pending.set()

    def _flush_loop(self) -> None:
        while True:
            self._pending.wait()
            # Gather what arrives within one interval into a single fsync.
            self._stop.wait(self._interval)
            self._pending.clear()
            self._fsync()
            # Checked after the clear: close() sets stop before it sets pending, so a close
            # whose pending this clear may have swallowed is seen here, and a later one wakes
            # the wait above.
            if self._stop.is_set():
                return

    def _fsync(self) -> None:
        # The fsync runs outside the lock: records written meanwhile need not wait for the
        # disk (an fsync can take milliseconds, and every key service call writes a record).
        # The descriptor stays open throughout: close() joins the flusher before closing it.
        with self._lock:
            fd = self._fd
        if fd < 0:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            with self._lock:
                self._error = exc.strerror or "fsync failed"

    def close(self) -> None:
        """Syncs what is pending and closes the file. Raises nothing."""
        if self._flusher is not None:
            self._stop.set()
            self._pending.set()
            self._flusher.join()
            self._flusher = None
        self._fsync()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> FileAuditSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
