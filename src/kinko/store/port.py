"""The Store port: the key-value backend under the key service and the cluster store.

Four methods, shaped after etcd v3 so that the etcd adapter is thin and the SQLite adapter
can keep the same guarantees:

- one global, strictly increasing **revision** counter per store; every committed write
  transaction bumps it by exactly one and stamps each key it touches with it
  (``mod_revision``), like etcd's;
- :meth:`Store.txn` is all-or-nothing: every guard is checked and every write applied in one
  atomic step, or nothing changes. Guards compare a key's ``mod_revision`` (0 = absent), so
  create-if-absent, update-if-unchanged and delete-if-unchanged are single ops;
- :meth:`Store.range` reads one consistent snapshot page by page (pass the first page's
  ``revision`` to later pages);
- :meth:`Store.watch` delivers every change after a revision, in order.

Adapters: ``kinko.store.memory.MemoryStore`` (the twin), ``kinko.store.sqlite.SqliteStore``,
``kinko.store.etcd_store.EtcdStore``. A transaction holds at most :data:`MAX_TXN_OPS` ops
(etcd's default ``--max-txn-ops``), whatever the adapter, so code that works on SQLite works
on etcd.

Errors: ``InvalidArgument`` (too many ops, a bad key), ``StoreUnavailable`` (the backend did
not answer, or a write's outcome is unknown), ``Conflict`` (a snapshot revision was
compacted). A failed guard is not an error: ``TxnResult.succeeded`` is False.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

MAX_TXN_OPS = 128


@dataclass(frozen=True, slots=True)
class Entry:
    key: bytes
    value: bytes = field(repr=False)
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class Page:
    entries: tuple[Entry, ...]
    more: bool  # another page follows; continue with start_after=entries[-1].key
    revision: int  # the snapshot this page was read at


@dataclass(frozen=True, slots=True)
class Put:
    """Write ``value`` if the key's current ``mod_revision`` equals ``expect`` (0 = absent).

    ``expect=None`` writes unconditionally.
    """

    key: bytes
    value: bytes = field(repr=False)
    expect: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the key if its ``mod_revision`` equals ``expect``; ``None``: unconditionally."""

    key: bytes
    expect: int | None = None


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the txn (unchanged if it failed)
    failed: tuple[int, ...] = ()  # indexes of the ops whose guard did not hold


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: bytes
    value: bytes = field(repr=False)  # b"" for DELETE
    mod_revision: int


class Watch(Protocol):
    """An open watch: iterate for events; ``close()`` ends the iteration."""

    def __iter__(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


class Store(Protocol):
    def get(self, key: bytes) -> Entry | None:
        """The current entry, or None. Raises StoreUnavailable."""
        ...

    def range(
        self, prefix: bytes, *, start_after: bytes = b"", limit: int = 500, revision: int = 0
    ) -> Page:
        """Keys with ``prefix`` in byte order, after ``start_after``, at ``revision`` (0 = now).

        Raises InvalidArgument (limit < 1), Conflict (revision compacted), StoreUnavailable.
        """
        ...

    def txn(self, ops: Sequence[Op]) -> TxnResult:
        """Apply every op atomically if every guard holds; otherwise change nothing.

        A key may appear at most once. Raises InvalidArgument (more than MAX_TXN_OPS ops, a
        repeated key), StoreUnavailable (no answer; for a write, the outcome is unknown).
        """
        ...

    def watch(self, prefix: bytes, *, after_revision: int) -> Watch:
        """Every change under ``prefix`` with a revision greater than ``after_revision``.

        Raises Conflict (that history was compacted), StoreUnavailable.
        """
        ...
