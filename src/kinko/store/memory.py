"""MemoryStore: the in-memory twin of the Store port, with etcd's revision rules.

Job: a fast, dependency-free :class:`~kinko.store.port.Store` for unit tests and single-process
tools, whose observable behaviour is the same as :class:`~kinko.store.sqlite.SqliteStore`'s and
:class:`~kinko.store.etcd_store.EtcdStore`'s (one contract suite runs against all three).

Invariants:

- **One lock.** Every method runs under one lock, so each is atomic with respect to every other
  and the store may be shared by any number of threads.
- **etcd's revisions.** A fresh store is at revision 1. A txn that changes at least one key
  bumps the revision by exactly one and stamps every key it writes with it (``mod_revision``);
  a key keeps its ``create_revision`` until it is deleted. A txn that changes nothing (no ops,
  or only deletes of absent keys) and a txn whose guards fail leave the revision unchanged.
- **Guards.** ``expect`` compares the key's current ``mod_revision``; an absent key has 0. If
  any guard fails, nothing is written and ``failed`` lists every op whose guard did not hold.
- **History.** Every change is kept as a version of its key and as an event, so a range at an
  old revision and a watch from an old revision are exact. :meth:`MemoryStore.compact` drops
  what only revisions below its argument need; reads and watches that need it then raise
  Conflict. The store compacts itself (like etcd's ``--auto-compaction-mode=revision``) so that
  it keeps between ``history`` and ``2 * history`` revisions.
- Messages name keys and revisions, never values.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from kinko.errors import Conflict, InvalidArgument
from kinko.store import rules
from kinko.store.port import Entry, Event, EventType, Op, Page, Put, TxnResult

#: Default number of revisions of history a MemoryStore keeps at least.
DEFAULT_HISTORY = 10_000


@dataclass(frozen=True, slots=True)
class _Version:
    """One state of one key: written at ``revision``, or deleted there (``value`` None)."""

    revision: int
    value: bytes | None = field(repr=False)
    create_revision: int


class MemoryStore:
    """The in-memory Store. ``history``: revisions kept at least before self-compaction.

    Raises InvalidArgument (``history`` < 1).
    """

    def __init__(self, *, history: int = DEFAULT_HISTORY) -> None:
        if history < 1:
            raise InvalidArgument(f"history must keep at least 1 revision, got {history}")
        self._history = history
        self._cond = threading.Condition(threading.Lock())
        self._revision = 1
        self._compacted = 0
        # Every key with at least one retained version, sorted, except the new ones still in
        # _unsorted (merged by the next range: one sort of a mostly sorted list instead of an
        # O(n) insertion per new key); its versions, oldest first.
        self._keys: list[bytes] = []
        self._unsorted: list[bytes] = []
        self._versions: dict[bytes, list[_Version]] = {}
        # Every retained event, in revision order and, within a revision, in op order.
        self._log: list[Event] = []

    # --- the port --------------------------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        """The current entry, or None. Raises nothing."""
        with self._cond:
            versions = self._versions.get(key)
            if not versions or versions[-1].value is None:
                return None
            return _entry(key, versions[-1])

    def range(
        self, prefix: bytes, *, start_after: bytes = b"", limit: int = 500, revision: int = 0
    ) -> Page:
        """Keys under ``prefix`` after ``start_after`` at ``revision`` (0 = now), in byte order.

        Raises InvalidArgument (limit < 1, a negative or future revision), Conflict (the
        revision was compacted).
        """
        rules.check_range(limit, revision)
        with self._cond:
            at = revision or self._revision
            if at > self._revision:
                raise rules.future_revision(at, self._revision)
            if at < self._compacted:
                raise Conflict(rules.compacted(at, self._compacted))
            if self._unsorted:
                self._keys.extend(self._unsorted)
                self._keys.sort()
                self._unsorted.clear()
            keys = self._keys
            entries: list[Entry] = []
            more = False
            start = bisect.bisect_left(keys, rules.range_start(prefix, start_after))
            for index in range(start, len(keys)):
                key = keys[index]
                if not key.startswith(prefix):
                    break
                version = _at(self._versions[key], at)
                if version is None:
                    continue
                if len(entries) == limit:
                    more = True
                    break
                entries.append(_entry(key, version))
            return Page(entries=tuple(entries), more=more, revision=at)

    def txn(self, ops: Sequence[Op]) -> TxnResult:
        """Applies every op if every guard holds; otherwise changes nothing.

        Raises InvalidArgument (more than MAX_TXN_OPS ops, a repeated or empty key, a
        negative ``expect``).
        """
        rules.check_ops(ops)
        with self._cond:
            failed = tuple(
                index
                for index, op in enumerate(ops)
                if op.expect is not None and self._mod_revision(op.key) != op.expect
            )
            if failed:
                return TxnResult(succeeded=False, revision=self._revision, failed=failed)
            revision = self._revision + 1
            events: list[Event] = []
            for op in ops:
                versions = self._versions.get(op.key)
                current = versions[-1] if versions else None
                live = current is not None and current.value is not None
                if isinstance(op, Put):
                    created = current.create_revision if current and live else revision
                    self._append(op.key, _Version(revision, op.value, created))
                    events.append(Event(EventType.PUT, op.key, op.value, revision))
                elif live:
                    self._append(op.key, _Version(revision, None, 0))
                    events.append(Event(EventType.DELETE, op.key, b"", revision))
            if events:
                self._revision = revision
                self._log.extend(events)
                if self._revision - self._compacted >= 2 * self._history:
                    self._compact(self._revision - self._history + 1)
                self._cond.notify_all()
            return TxnResult(succeeded=True, revision=self._revision)

    def watch(self, prefix: bytes, *, after_revision: int) -> MemoryWatch:
        """Every change under ``prefix`` with a revision above ``after_revision``, in order.

        Raises InvalidArgument (negative ``after_revision``), Conflict (that history was
        compacted). Iterating raises Conflict if the watch falls behind a compaction.
        """
        rules.check_after(after_revision)
        with self._cond:
            if after_revision + 1 < self._compacted:
                raise Conflict(rules.compacted(after_revision + 1, self._compacted))
        return MemoryWatch(self, prefix, after_revision)

    # --- beyond the port -------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current revision."""
        with self._cond:
            return self._revision

    def compact(self, revision: int) -> None:
        """Drops the history that only reads below ``revision`` and watches from below it need.

        Afterwards a range at a revision below ``revision`` and a watch with ``after_revision``
        below ``revision - 1`` raise Conflict. Compacting at or below an earlier compaction does
        nothing.

        Raises InvalidArgument (``revision`` < 1 or in the future).
        """
        with self._cond:
            if revision < 1 or revision > self._revision:
                raise InvalidArgument(
                    f"compaction revision must be in 1..{self._revision}, got {revision}"
                )
            if revision > self._compacted:
                self._compact(revision)
                self._cond.notify_all()

    # --- internals (under the lock) --------------------------------------------------------

    def _mod_revision(self, key: bytes) -> int:
        versions = self._versions.get(key)
        if not versions or versions[-1].value is None:
            return 0
        return versions[-1].revision

    def _append(self, key: bytes, version: _Version) -> None:
        versions = self._versions.get(key)
        if versions is None:
            self._versions[key] = [version]
            self._unsorted.append(key)
        else:
            versions.append(version)

    def _compact(self, revision: int) -> None:
        # Only keys changed since the last compaction can hold versions to drop: every other
        # key's versions are a single live one kept by the previous compaction.
        cut = bisect.bisect_left(self._log, revision, key=lambda e: e.mod_revision)
        touched = {event.key for event in self._log[:cut]}
        del self._log[:cut]
        gone = False
        for key in touched:
            versions = self._versions[key]
            keep = [v for v in versions if v.revision > revision]
            older = [v for v in versions if v.revision <= revision]
            if older and older[-1].value is not None:
                keep.insert(0, older[-1])
            if keep:
                self._versions[key] = keep
            else:
                del self._versions[key]
                gone = True
        if gone:
            self._keys = [key for key in self._keys if key in self._versions]
            self._unsorted = [key for key in self._unsorted if key in self._versions]
        self._compacted = revision

    def _events_after(self, prefix: bytes, after: int) -> list[Event]:
        start = bisect.bisect_right(self._log, after, key=lambda e: e.mod_revision)
        return [e for e in self._log[start:] if e.key.startswith(prefix)]


class MemoryWatch:
    """A watch on a MemoryStore; one iteration (shared by every ``iter()``), ended by close()."""

    def __init__(self, store: MemoryStore, prefix: bytes, after_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._after = after_revision
        self._closed = False
        self._events = self._run()

    def __iter__(self) -> Iterator[Event]:
        """Events in revision order; blocks for new ones. Raises Conflict (compacted)."""
        return self._events

    def _run(self) -> Iterator[Event]:
        store = self._store
        while True:
            with store._cond:
                while not self._closed and store._revision <= self._after:
                    store._cond.wait()
                if self._closed:
                    return
                if self._after + 1 < store._compacted:
                    raise Conflict(rules.compacted(self._after + 1, store._compacted))
                batch = store._events_after(self._prefix, self._after)
                self._after = store._revision
            for event in batch:
                if self._closed:
                    return
                yield event

    def close(self) -> None:
        """Ends the iteration, also one blocked in another thread. Raises nothing."""
        with self._store._cond:
            self._closed = True
            self._store._cond.notify_all()


def _at(versions: list[_Version], revision: int) -> _Version | None:
    """The live version at ``revision``, or None if the key was absent then."""
    index = bisect.bisect_right(versions, revision, key=lambda v: v.revision)
    if index == 0:
        return None
    version = versions[index - 1]
    return version if version.value is not None else None


def _entry(key: bytes, version: _Version) -> Entry:
    """The entry of a live version."""
    return Entry(
        key=key,
        value=version.value or b"",
        mod_revision=version.revision,
        create_revision=version.create_revision,
    )
