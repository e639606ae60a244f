"""The Store contract on MemoryStore, plus what only the twin has: self-compaction."""

from __future__ import annotations

import pytest

from kinko.errors import Conflict, InvalidArgument
from kinko.store.memory import MemoryStore
from kinko.store.port import Put
from tests.store_contract import CompactingStore, StoreContract, take


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    def second_client(self, store: CompactingStore) -> CompactingStore:
        return store


def test_history_is_bounded_by_self_compaction() -> None:
    store = MemoryStore(history=10)
    for i in range(25):
        store.txn([Put(b"/k", b"%d" % i)])
    assert store.revision == 26
    # Between 10 and 20 revisions are kept: 26 - 10 + 1 = 17 is the oldest readable one.
    assert store.range(b"/", revision=17).entries[0].value == b"15"
    with pytest.raises(Conflict, match="compacted"):
        store.range(b"/", revision=6)
    with pytest.raises(Conflict, match="compacted"):
        store.watch(b"/", after_revision=1)


def test_a_watch_that_falls_behind_a_compaction_is_a_conflict() -> None:
    store = MemoryStore()
    watch = store.watch(b"/", after_revision=1)
    for i in range(5):
        store.txn([Put(b"/k", b"%d" % i)])
    store.compact(4)
    with pytest.raises(Conflict, match="compacted"):
        take(watch, 1)


def test_bad_history_and_compaction_revisions_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="history"):
        MemoryStore(history=0)
    store = MemoryStore()
    with pytest.raises(InvalidArgument, match=r"1\.\.1"):
        store.compact(2)
    with pytest.raises(InvalidArgument):
        store.compact(0)
