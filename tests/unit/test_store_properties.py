"""Property tests: random txn sequences on MemoryStore and SqliteStore against a dict model.

The model is the port's rules written as plainly as possible: a dict per revision, guards
compared against it, one revision per changing txn. After every txn the store must agree with
the model on the txn's result, on every key, on paged ranges now and at every older revision,
and at the end on the full watch history, before and after a compaction.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinko.errors import Conflict
from kinko.store.memory import MemoryStore
from kinko.store.port import Delete, Entry, Event, EventType, Op, Put, Store, TxnResult
from kinko.store.sqlite import SqliteStore
from tests.store_contract import take, walk

KEYS = [b"/p/a", b"/p/b", b"/p/c", b"/p/c\xff", b"/p/d\x00", b"/q/x"]

# An op before its guard is resolved against the model: (key, is_put, value, guard kind, n).
RawOp = tuple[bytes, bool, bytes, str, int]

raw_ops = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.booleans(),
        st.binary(max_size=4),
        st.sampled_from(["none", "absent", "current", "other"]),
        st.integers(min_value=1, max_value=40),
    ),
    max_size=5,
    unique_by=lambda op: op[0],
)
txn_sequences = st.lists(raw_ops, min_size=1, max_size=25)


@dataclass
class Model:
    """The port's rules on plain dicts."""

    revision: int = 1
    snapshots: dict[int, dict[bytes, Entry]] = field(default_factory=lambda: {1: {}})
    events: list[Event] = field(default_factory=list)

    @property
    def now(self) -> dict[bytes, Entry]:
        return self.snapshots[self.revision]

    def resolve(self, raw: RawOp) -> Op:
        key, is_put, value, kind, n = raw
        current = self.now.get(key)
        expect: int | None
        if kind == "none":
            expect = None
        elif kind == "absent":
            expect = 0
        elif kind == "current":
            expect = current.mod_revision if current else 0
        else:
            expect = n
        return Put(key, value, expect=expect) if is_put else Delete(key, expect=expect)

    def txn(self, ops: list[Op]) -> TxnResult:
        state = self.now
        failed = tuple(
            i
            for i, op in enumerate(ops)
            if op.expect is not None
            and (state[op.key].mod_revision if op.key in state else 0) != op.expect
        )
        if failed:
            return TxnResult(False, self.revision, failed)
        new = dict(state)
        revision = self.revision + 1
        events: list[Event] = []
        for op in ops:
            if isinstance(op, Put):
                created = state[op.key].create_revision if op.key in state else revision
                new[op.key] = Entry(op.key, op.value, revision, created)
                events.append(Event(EventType.PUT, op.key, op.value, revision))
            elif op.key in new:
                del new[op.key]
                events.append(Event(EventType.DELETE, op.key, b"", revision))
        if events:
            self.revision = revision
            self.snapshots[revision] = new
            self.events.extend(events)
        return TxnResult(True, self.revision)


def check(store: Store, sequence: list[list[RawOp]]) -> None:
    model = Model()
    for raw in sequence:
        ops = [model.resolve(op) for op in raw]
        assert store.txn(ops) == model.txn(ops)
        for key in KEYS:
            assert store.get(key) == model.now.get(key)
        assert walk(store, b"/p/", limit=2) == sorted(
            (e for e in model.now.values() if e.key.startswith(b"/p/")), key=lambda e: e.key
        )
    for revision, snapshot in model.snapshots.items():
        assert walk(store, b"", limit=3, revision=revision) == sorted(
            snapshot.values(), key=lambda e: e.key
        )
    watch = store.watch(b"/p/", after_revision=1)
    expected = [e for e in model.events if e.key.startswith(b"/p/")]
    assert take(watch, len(expected)) == expected
    watch.close()
    # Compaction at the middle revision keeps everything from there on exact.
    middle = (1 + model.revision) // 2
    compact(store, middle)
    for revision, snapshot in model.snapshots.items():
        if revision < middle:
            with pytest.raises(Conflict):
                store.range(b"", revision=revision)
        else:
            assert walk(store, b"", limit=3, revision=revision) == sorted(
                snapshot.values(), key=lambda e: e.key
            )
    watch = store.watch(b"", after_revision=middle - 1)
    expected = [e for e in model.events if e.mod_revision >= middle]
    assert take(watch, len(expected)) == expected
    watch.close()


def compact(store: Store, revision: int) -> None:
    assert isinstance(store, MemoryStore | SqliteStore)
    store.compact(revision)


@settings(max_examples=150, deadline=None)
@given(txn_sequences)
def test_memory_store_matches_the_model(sequence: list[list[RawOp]]) -> None:
    check(MemoryStore(), sequence)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txn_sequences)
def test_sqlite_store_matches_the_model(sequence: list[list[RawOp]]) -> None:
    with tempfile.TemporaryDirectory() as folder, SqliteStore(Path(folder) / "k.db") as store:
        check(store, sequence)
