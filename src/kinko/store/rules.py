"""The argument rules every Store adapter applies before it touches its backend.

Job: one place for the checks of :mod:`kinko.store.port` that do not depend on the backend,
so the in-memory twin, SQLite and etcd refuse exactly the same calls with the same messages.

Invariants:

- A refused call changes nothing: every rule is checked before any read or write.
- Messages name keys (storage paths), counts and revisions; never values.
"""

from __future__ import annotations

from collections.abc import Sequence

from kinko.errors import InvalidArgument
from kinko.store.port import MAX_TXN_OPS, Delete, Op, Put


def show(key: bytes) -> str:
    """A storage key as text for a message; undecodable bytes are escaped, never dropped."""
    return key.decode("utf-8", errors="backslashreplace")


def check_ops(ops: Sequence[Op]) -> None:
    """Checks a txn's ops against the port's rules.

    Raises InvalidArgument (more than MAX_TXN_OPS ops, an op that is neither Put nor Delete,
    an empty key, a negative ``expect``, the same key twice).
    """
    if len(ops) > MAX_TXN_OPS:
        raise InvalidArgument(f"a txn holds at most {MAX_TXN_OPS} ops, got {len(ops)}")
    seen: set[bytes] = set()
    for index, op in enumerate(ops):
        if not isinstance(op, Put | Delete):
            raise InvalidArgument(
                f"txn op {index}: expected Put or Delete, got {type(op).__name__}"
            )
        if not isinstance(op.key, bytes) or not op.key:
            raise InvalidArgument(f"txn op {index}: expected a non-empty bytes key")
        if isinstance(op, Put) and not isinstance(op.value, bytes):
            raise InvalidArgument(f"txn op {index}: expected a bytes value")
        if op.expect is not None and op.expect < 0:
            raise InvalidArgument(
                f"txn op {index}: expected mod_revision >= 0 (0 = absent), got {op.expect}"
            )
        if op.key in seen:
            raise InvalidArgument(f"key {show(op.key)} appears more than once in one txn")
        seen.add(op.key)


def check_range(limit: int, revision: int) -> None:
    """Raises InvalidArgument (``limit`` < 1, ``revision`` < 0)."""
    if limit < 1:
        raise InvalidArgument(f"page limit must be at least 1, got {limit}")
    if revision < 0:
        raise InvalidArgument(f"revision must be 0 (now) or positive, got {revision}")


def check_after(after_revision: int) -> None:
    """Raises InvalidArgument (``after_revision`` < 0)."""
    if after_revision < 0:
        raise InvalidArgument(f"after_revision must be 0 or positive, got {after_revision}")


def future_revision(revision: int, current: int) -> InvalidArgument:
    """The error for a read at a revision the store has not reached (etcd's ErrFutureRev)."""
    return InvalidArgument(f"revision {revision} is in the future: the store is at {current}")


def compacted(revision: int, compacted_revision: int) -> str:
    """The message of the Conflict for a read or watch needing compacted history."""
    return (
        f"revision {revision} was compacted (history starts at {compacted_revision}); "
        "read again at the current revision"
    )


def range_start(prefix: bytes, start_after: bytes) -> bytes:
    """The first key a page may hold: ``prefix``, or just after ``start_after`` if later."""
    after = start_after + b"\x00" if start_after else b""
    return max(prefix, after)


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with ``prefix``; None when there is none.

    Same rule as etcd's ``range_end``: increment the last byte below 0xff and drop what
    follows it. An empty or all-0xff prefix has no end.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return None
