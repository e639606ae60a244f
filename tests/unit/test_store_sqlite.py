"""The Store contract on SqliteStore, plus durability and several clients of one file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinko.errors import Conflict, InvalidArgument, StoreUnavailable
from kinko.store.port import Delete, Entry, EventType, Put
from kinko.store.sqlite import SqliteStore
from tests.store_contract import (
    SECRET,
    CompactingStore,
    StoreContract,
    cas_increment,
    discard,
    run_threads,
    take,
)


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        self._others: list[SqliteStore] = []
        with SqliteStore(tmp_path / "kinko.db") as store:
            yield store
        for other in self._others:
            other.close()

    def second_client(self, store: CompactingStore) -> CompactingStore:
        assert isinstance(store, SqliteStore)
        other = SqliteStore(store.path)
        self._others.append(other)
        return other


def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "kinko.db"
    with SqliteStore(path) as store:
        one = store.txn([Put(b"/r/a", b"1"), Put(b"/r/b", b"1")]).revision
        two = store.txn([Put(b"/r/a", b"2"), Delete(b"/r/b")]).revision
        store.compact(one)
    with SqliteStore(path) as store:
        assert store.revision == two
        assert store.get(b"/r/a") == Entry(b"/r/a", b"2", two, one)
        assert store.get(b"/r/b") is None
        assert [e.key for e in store.range(b"/r/", revision=one).entries] == [b"/r/a", b"/r/b"]
        watch = store.watch(b"/r/", after_revision=one)
        assert [(e.type, e.key) for e in take(watch, 2)] == [
            (EventType.PUT, b"/r/a"),
            (EventType.DELETE, b"/r/b"),
        ]
        watch.close()
        with pytest.raises(Conflict):
            store.range(b"/r/", revision=one - 1)
        assert store.txn([Put(b"/r/c", b"3")]).revision == two + 1


def test_the_file_is_wal_with_full_sync(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "kinko.db") as store:
        store.txn([Put(b"/k", b"v")])
    conn = sqlite3.connect(tmp_path / "kinko.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"meta", "kv", "history"} <= tables
        assert conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone() == (2,)
    finally:
        conn.close()
    with SqliteStore(tmp_path / "kinko.db") as store:
        reader = store._reader()
        assert reader.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert store._writer.execute("PRAGMA synchronous").fetchone() == (2,)


def test_a_file_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kinko.db"
    with SqliteStore(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema'")
    conn.close()
    with pytest.raises(InvalidArgument, match="expected schema 1, got 99"):
        SqliteStore(path)


def test_a_file_that_is_not_sqlite_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "kinko.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match=r"kinko\.db"):
        SqliteStore(path)


def test_a_held_write_lock_makes_txn_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kinko.db"
    with SqliteStore(path, busy_timeout=0.2) as store:
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="nothing was written") as info:
                store.txn([Put(b"/k", SECRET)])
            assert SECRET.decode() not in str(info.value)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        assert store.get(b"/k") is None
        assert store.txn([Put(b"/k", b"v")]).succeeded


def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kinko.db")
    watch = store.watch(b"/", after_revision=1)
    store.close()
    assert list(watch) == []
    with pytest.raises(StoreUnavailable, match="closed"):
        store.txn([Put(b"/k", b"v")])
    with pytest.raises(StoreUnavailable):
        store.get(b"/k")


def test_a_watch_sees_commits_of_another_process(tmp_path: Path) -> None:
    """A write by another process wakes no condition here: the poll must find it."""
    path = tmp_path / "kinko.db"
    with SqliteStore(path, poll_interval=0.01) as store:
        watch = store.watch(b"/p/", after_revision=store.revision)
        _run_child(path, "store.txn([Put(b'/p/child', b'v')])")
        events = take(watch, 1)
        watch.close()
        assert [(e.type, e.key) for e in events] == [(EventType.PUT, b"/p/child")]


def test_two_processes_incrementing_by_cas_never_lose_an_update(tmp_path: Path) -> None:
    path = tmp_path / "kinko.db"
    rounds = 1000
    with SqliteStore(path) as store:
        # The child announces itself before it starts, so both really run at the same time.
        watch = store.watch(b"/ready", after_revision=store.revision)
        child = _start_child(
            path, f"store.txn([Put(b'/ready', b'')]); cas_increment(store, b'/counter', {rounds})"
        )
        assert [e.key for e in take(watch, 1)] == [b"/ready"]
        watch.close()
        cas_increment(store, b"/counter", rounds)
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode(errors="replace")
        entry = store.get(b"/counter")
        assert entry is not None
        assert int(entry.value) == 2 * rounds
        # Each increment was one txn, plus the child's announcement.
        assert store.revision == 1 + 1 + 2 * rounds


_CHILD = """
import sys
from pathlib import Path
from kinko.store.port import Put
from kinko.store.sqlite import SqliteStore
from tests.store_contract import cas_increment
with SqliteStore(Path(sys.argv[1])) as store:
    {code}
"""


def _start_child(path: Path, code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(code=code), str(path)],
        cwd=Path(__file__).parents[2],
        stderr=subprocess.PIPE,
    )


def _run_child(path: Path, code: str) -> None:
    child = _start_child(path, code)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode(errors="replace")


def test_one_store_shared_by_four_threads_never_loses_an_update(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "kinko.db") as store:
        run_threads([lambda: discard(cas_increment(store, b"/counter", 100))] * 4)
        entry = store.get(b"/counter")
        assert entry is not None
        assert int(entry.value) == 400
        assert store.revision == 401


def test_new_store_file_and_its_wal_are_private_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    store = SqliteStore(path)
    try:
        store.txn([Put(b"/k", b"v", 0)])
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    finally:
        store.close()
    assert modes["private.db"] == 0o600
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_count_prefix_counts_keys_under_the_prefix_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "count.db")
    try:
        store.txn([Put(b"/a/" + bytes([i]), b"v", 0) for i in range(5)])
        store.txn([Put(b"/b/x", b"v", 0), Put(b"/a", b"v", 0), Put(b"\xff\xff", b"v", 0)])
        store.txn([Delete(b"/a/\x01", None)])
        assert store.count_prefix(b"/a/") == 4
        assert store.count_prefix(b"/") == 6
        assert store.count_prefix(b"\xff") == 1
        assert store.count_prefix(b"/c/") == 0
    finally:
        store.close()


def test_deleted_values_do_not_linger_in_the_file(tmp_path: Path) -> None:
    marker = b"superseded-ciphertext-" * 64
    store = SqliteStore(tmp_path / "secure.db")
    try:
        store.txn([Put(b"/k", marker, 0)])
        store.txn([Put(b"/k", b"new", None)])
        store.compact(store.range(b"/").revision)
    finally:
        store.close()  # the last connection checkpoints the WAL into the file
    leftovers = [p.name for p in tmp_path.iterdir() if marker[:40] in p.read_bytes()]
    assert leftovers == []
