"""The contract every :class:`~kinko.store.port.Store` adapter keeps, as one base class.

A test module subclasses :class:`StoreContract` (as ``Test…``), provides a ``store`` fixture
(a store with a ``compact(revision)`` method) and overrides :meth:`StoreContract.second_client`.
The same tests then run against the in-memory twin, SQLite and a real etcd-server, so the twin
cannot drift from the real parts.

Every test works under its own ``ns`` prefix, because an etcd server may be shared by a whole
module; tests that compare revisions assume nobody else writes during the test.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Protocol

import pytest

from kinko.errors import Conflict, InvalidArgument
from kinko.store.port import (
    MAX_TXN_OPS,
    Delete,
    Entry,
    Event,
    EventType,
    Put,
    Store,
    Watch,
)

SECRET = b"SECRET-VALUE-BYTES"
#: Upper bound for anything a test waits on (a watch event, a thread); never a timing claim.
PATIENCE_S = 20.0


class CompactingStore(Store, Protocol):
    """A Store that can also drop old history (every adapter has this beyond the port)."""

    def compact(self, revision: int) -> None: ...


def take(watch: Watch, count: int) -> list[Event]:
    """The next ``count`` events of ``watch``; fewer if nothing more came within PATIENCE_S."""
    timer = threading.Timer(PATIENCE_S, watch.close)
    timer.start()
    got: list[Event] = []
    try:
        if count:
            for event in watch:
                got.append(event)
                if len(got) == count:
                    break
    finally:
        timer.cancel()
    return got


def watch_one(store: Store, prefix: bytes, *, after_revision: int) -> list[Event]:
    """Opens a watch and takes one event (an adapter may raise on opening or on iterating)."""
    watch = store.watch(prefix, after_revision=after_revision)
    try:
        return take(watch, 1)
    finally:
        watch.close()


def now(store: Store, ns: bytes) -> int:
    """The store's current revision."""
    return store.range(ns, limit=1).revision


def fill(store: Store, keys: list[bytes], value: bytes = b"v") -> int:
    """Creates ``keys`` in txns of MAX_TXN_OPS; returns the last revision."""
    revision = 0
    for start in range(0, len(keys), MAX_TXN_OPS):
        chunk = keys[start : start + MAX_TXN_OPS]
        result = store.txn([Put(key, value, expect=0) for key in chunk])
        assert result.succeeded
        revision = result.revision
    return revision


def walk(store: Store, prefix: bytes, *, limit: int, revision: int = 0) -> list[Entry]:
    """Every entry under ``prefix`` at one snapshot, page by page."""
    page = store.range(prefix, limit=limit, revision=revision)
    entries = list(page.entries)
    while page.more:
        assert len(page.entries) >= 1
        page = store.range(prefix, start_after=entries[-1].key, limit=limit, revision=page.revision)
        entries.extend(page.entries)
    return entries


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Runs each target in its own thread, joins them, re-raises the first failure."""
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(fn)) for fn in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE_S * 3)
        assert not thread.is_alive(), "a worker thread did not finish"
    if errors:
        raise errors[0]


def cas_increment(store: Store, key: bytes, times: int) -> int:
    """Adds 1 to the decimal counter at ``key`` ``times`` times by CAS; returns lost rounds."""
    lost = 0
    for _ in range(times):
        while True:
            entry = store.get(key)
            value = int(entry.value) + 1 if entry else 1
            expect = entry.mod_revision if entry else 0
            if store.txn([Put(key, str(value).encode(), expect=expect)]).succeeded:
                break
            lost += 1
    return lost


class StoreContract:
    """Contract tests; subclasses provide the ``store`` fixture and :meth:`second_client`."""

    #: Increments per thread in the concurrent counter test.
    COUNTER_ROUNDS = 100

    def second_client(self, store: CompactingStore) -> CompactingStore:
        """Another client of the same data (another connection), or ``store`` itself."""
        raise NotImplementedError

    @pytest.fixture
    def ns(self) -> bytes:
        """A key prefix no other test uses."""
        return f"/t/{uuid.uuid4().hex}/".encode()

    # --- revisions and entries --------------------------------------------------------------

    def test_absent_key_reads_as_none(self, store: CompactingStore, ns: bytes) -> None:
        assert store.get(ns + b"nothing") is None
        page = store.range(ns)
        assert page.entries == ()
        assert page.more is False
        assert page.revision >= 1

    def test_put_stamps_mod_and_create_revision(self, store: CompactingStore, ns: bytes) -> None:
        first = store.txn([Put(ns + b"a", b"v1")])
        assert first.succeeded
        assert first.failed == ()
        assert store.get(ns + b"a") == Entry(ns + b"a", b"v1", first.revision, first.revision)
        second = store.txn([Put(ns + b"a", b"v2")])
        entry = store.get(ns + b"a")
        assert entry == Entry(ns + b"a", b"v2", second.revision, first.revision)
        assert "v2" not in repr(entry)

    def test_each_changing_txn_bumps_the_revision_by_one(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        start = now(store, ns)
        one = store.txn([Put(ns + b"a", b"1"), Put(ns + b"b", b"2"), Put(ns + b"c", b"3")])
        assert one.revision == start + 1
        entries = store.range(ns).entries
        assert {e.mod_revision for e in entries} == {start + 1}
        two = store.txn([Put(ns + b"a", b"x"), Delete(ns + b"b")])
        assert two.revision == start + 2
        assert now(store, ns) == start + 2

    def test_a_txn_that_changes_nothing_keeps_the_revision(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        start = now(store, ns)
        assert store.txn([]).revision == start
        result = store.txn([Delete(ns + b"absent"), Delete(ns + b"gone", expect=0)])
        assert result.succeeded
        assert result.revision == start
        assert now(store, ns) == start

    def test_delete_then_recreate_gets_a_new_create_revision(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        first = store.txn([Put(ns + b"k", b"1")]).revision
        store.txn([Delete(ns + b"k")])
        assert store.get(ns + b"k") is None
        again = store.txn([Put(ns + b"k", b"2", expect=0)])
        assert again.succeeded
        entry = store.get(ns + b"k")
        assert entry is not None
        assert entry.create_revision == again.revision != first

    # --- guards -----------------------------------------------------------------------------

    def test_create_if_absent_wins_once(self, store: CompactingStore, ns: bytes) -> None:
        won = store.txn([Put(ns + b"k", b"first", expect=0)])
        lost = store.txn([Put(ns + b"k", b"second", expect=0)])
        assert won.succeeded
        assert (lost.succeeded, lost.failed, lost.revision) == (False, (0,), won.revision)
        entry = store.get(ns + b"k")
        assert entry is not None
        assert entry.value == b"first"

    def test_racing_creators_exactly_one_wins(self, store: CompactingStore, ns: bytes) -> None:
        other = self.second_client(store)
        rounds = 20
        barrier = threading.Barrier(2, timeout=PATIENCE_S)
        wins: dict[int, list[bytes]] = {i: [] for i in range(rounds)}

        def creator(client: Store, name: bytes) -> Callable[[], None]:
            def run() -> None:
                for i in range(rounds):
                    barrier.wait()
                    if client.txn([Put(ns + b"race%d" % i, name, expect=0)]).succeeded:
                        wins[i].append(name)

            return run

        run_threads([creator(store, b"one"), creator(other, b"two")])
        for i in range(rounds):
            assert len(wins[i]) == 1, f"round {i}: winners {wins[i]}"
            entry = store.get(ns + b"race%d" % i)
            assert entry is not None
            assert entry.value == wins[i][0]

    def test_cas_update_holds_only_on_the_current_revision(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        created = store.txn([Put(ns + b"k", b"v1", expect=0)]).revision
        updated = store.txn([Put(ns + b"k", b"v2", expect=created)])
        assert updated.succeeded
        stale = store.txn([Put(ns + b"k", b"v3", expect=created)])
        assert (stale.succeeded, stale.failed, stale.revision) == (False, (0,), updated.revision)
        entry = store.get(ns + b"k")
        assert entry is not None
        assert (entry.value, entry.mod_revision) == (b"v2", updated.revision)
        # A guard on an absent key with a non-zero revision fails too.
        assert store.txn([Put(ns + b"absent", b"v", expect=created)]).failed == (0,)
        assert store.get(ns + b"absent") is None

    def test_cas_delete_holds_only_on_the_current_revision(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        first = store.txn([Put(ns + b"k", b"v1")]).revision
        second = store.txn([Put(ns + b"k", b"v2")]).revision
        stale = store.txn([Delete(ns + b"k", expect=first)])
        assert (stale.succeeded, stale.failed) == (False, (0,))
        assert store.get(ns + b"k") is not None
        assert store.txn([Delete(ns + b"k", expect=0)]).failed == (0,)
        deleted = store.txn([Delete(ns + b"k", expect=second)])
        assert (deleted.succeeded, deleted.revision) == (True, second + 1)
        assert store.get(ns + b"k") is None
        # A deleted key reads as absent: mod_revision 0.
        assert store.txn([Delete(ns + b"k", expect=second)]).failed == (0,)
        assert store.txn([Put(ns + b"k", b"v3", expect=0)]).succeeded

    def test_failed_reports_every_broken_guard_and_nothing_is_written(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        base = store.txn([Put(ns + b"a", b"1"), Put(ns + b"b", b"1"), Put(ns + b"c", b"1")])
        before = walk(store, ns, limit=10)
        result = store.txn(
            [
                Put(ns + b"a", b"2", expect=base.revision),  # holds
                Put(ns + b"b", b"2", expect=base.revision - 1),  # stale
                Put(ns + b"new", b"2"),  # unguarded
                Delete(ns + b"c", expect=0),  # c exists
                Put(ns + b"d", b"2", expect=0),  # holds
                Delete(ns + b"e", expect=7),  # e is absent
            ]
        )
        assert (result.succeeded, result.failed, result.revision) == (
            False,
            (1, 3, 5),
            base.revision,
        )
        assert walk(store, ns, limit=10) == before

    def test_one_bad_guard_among_many_writes_nothing(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        keys = [ns + b"k%03d" % i for i in range(MAX_TXN_OPS)]
        ops: list[Put | Delete] = [Put(key, b"v") for key in keys[:-1]]
        ops.append(Put(keys[-1], b"v", expect=12345))
        result = store.txn(ops)
        assert (result.succeeded, result.failed) == (False, (MAX_TXN_OPS - 1,))
        assert store.range(ns).entries == ()

    # --- limits -----------------------------------------------------------------------------

    def test_txn_size_limit(self, store: CompactingStore, ns: bytes) -> None:
        keys = [ns + b"k%03d" % i for i in range(MAX_TXN_OPS + 1)]
        with pytest.raises(InvalidArgument, match="at most 128 ops, got 129"):
            store.txn([Put(key, b"v") for key in keys])
        assert store.range(ns).entries == ()
        assert store.txn([Put(key, b"v") for key in keys[:MAX_TXN_OPS]]).succeeded
        assert len(walk(store, ns, limit=500)) == MAX_TXN_OPS

    def test_a_repeated_key_is_refused_and_nothing_is_written(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        start = now(store, ns)
        cases: list[list[Put | Delete]] = [
            [Put(ns + b"a", SECRET), Put(ns + b"a", SECRET)],
            [Put(ns + b"b", SECRET), Delete(ns + b"b")],
        ]
        for ops in cases:
            with pytest.raises(InvalidArgument, match="more than once") as info:
                store.txn(ops)
            assert SECRET.decode() not in str(info.value)
        assert now(store, ns) == start
        assert store.range(ns).entries == ()

    def test_bad_arguments_are_refused(self, store: CompactingStore, ns: bytes) -> None:
        with pytest.raises(InvalidArgument, match="non-empty bytes key"):
            store.txn([Put(b"", SECRET)])
        with pytest.raises(InvalidArgument, match="mod_revision >= 0"):
            store.txn([Put(ns + b"a", SECRET, expect=-1)])
        with pytest.raises(InvalidArgument, match="limit must be at least 1"):
            store.range(ns, limit=0)
        with pytest.raises(InvalidArgument, match="revision must be"):
            store.range(ns, revision=-1)
        with pytest.raises(InvalidArgument, match="after_revision"):
            store.watch(ns, after_revision=-1)
        with pytest.raises(InvalidArgument):
            store.range(ns, revision=now(store, ns) + 1000)
        assert store.range(ns).entries == ()

    # --- ranges -----------------------------------------------------------------------------

    def test_range_keeps_to_the_prefix_in_byte_order(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        inside = [ns + b"p/" + suffix for suffix in (b"", b"\x00", b"a", b"b\xff", b"\xff\xff")]
        outside = [ns + b"p", ns + b"p.", ns + b"p0", ns + b"o\xff"]
        fill(store, inside + outside)
        assert [e.key for e in walk(store, ns + b"p/", limit=2)] == sorted(inside)
        # A prefix ending in 0xff still ends at the right key.
        assert [e.key for e in store.range(ns + b"p/b\xff").entries] == [ns + b"p/b\xff"]
        # start_after is exclusive; before the prefix it changes nothing.
        after = store.range(ns + b"p/", start_after=ns + b"p/a").entries
        assert [e.key for e in after] == sorted(inside)[3:]
        before = store.range(ns + b"p/", start_after=ns + b"a").entries
        assert [e.key for e in before] == sorted(inside)
        assert store.range(ns + b"p/", start_after=ns + b"q").entries == ()

    def test_paging_reads_one_snapshot_while_writes_happen(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        keys = [ns + b"s%04d" % i for i in range(300)]
        fill(store, keys, b"old")
        first = store.range(ns, limit=40)
        assert (len(first.entries), first.more) == (40, True)
        store.txn([Put(keys[-1], b"new"), Put(ns + b"s9999", b"late"), Delete(keys[100])])
        store.txn([Delete(keys[41]), Put(ns + b"s0040x", b"between")])
        entries = list(first.entries)
        page = first
        while page.more:
            page = store.range(ns, start_after=entries[-1].key, limit=40, revision=first.revision)
            assert page.revision == first.revision
            assert len(page.entries) <= 40
            entries.extend(page.entries)
        assert [e.key for e in entries] == keys
        assert {e.value for e in entries} == {b"old"}
        current = walk(store, ns, limit=77)
        assert len(current) == 300 - 2 + 2
        assert {e.key: e.value for e in current}[keys[-1]] == b"new"

    def test_range_at_an_old_revision_reads_that_revision(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        one = store.txn([Put(ns + b"a", b"a1"), Put(ns + b"b", b"b1")]).revision
        two = store.txn([Put(ns + b"a", b"a2"), Delete(ns + b"b"), Put(ns + b"c", b"c2")]).revision
        store.txn([Delete(ns + b"a"), Put(ns + b"b", b"b3")])
        at_one = store.range(ns, revision=one)
        assert at_one.revision == one
        assert at_one.entries == (
            Entry(ns + b"a", b"a1", one, one),
            Entry(ns + b"b", b"b1", one, one),
        )
        at_two = store.range(ns, revision=two).entries
        assert at_two == (Entry(ns + b"a", b"a2", two, one), Entry(ns + b"c", b"c2", two, two))
        assert [e.key for e in store.range(ns, revision=two, limit=1).entries] == [ns + b"a"]
        assert [e.value for e in store.range(ns).entries] == [b"b3", b"c2"]

    # --- compaction -------------------------------------------------------------------------

    def test_compacted_history_is_a_conflict(self, store: CompactingStore, ns: bytes) -> None:
        one = store.txn([Put(ns + b"a", b"1"), Put(ns + b"b", b"1")]).revision
        two = store.txn([Put(ns + b"a", b"2")]).revision
        three = store.txn([Delete(ns + b"b"), Put(ns + b"c", b"3")]).revision
        store.compact(two)
        with pytest.raises(Conflict, match="compacted"):
            store.range(ns, revision=one)
        # The compaction revision itself, and everything after it, stays readable.
        assert [(e.key, e.value) for e in store.range(ns, revision=two).entries] == [
            (ns + b"a", b"2"),
            (ns + b"b", b"1"),
        ]
        assert [e.key for e in store.range(ns, revision=three).entries] == [ns + b"a", ns + b"c"]
        with pytest.raises(Conflict, match="compacted"):
            watch_one(store, ns, after_revision=one - 1)
        # A watch from the compaction revision on still sees every change.
        watch = store.watch(ns, after_revision=two - 1)
        events = take(watch, 3)
        watch.close()
        assert [(e.type, e.key, e.mod_revision) for e in events] == [
            (EventType.PUT, ns + b"a", two),
            (EventType.DELETE, ns + b"b", three),
            (EventType.PUT, ns + b"c", three),
        ]
        store.compact(one)  # an earlier revision: nothing to do
        assert [e.key for e in store.range(ns).entries] == [ns + b"a", ns + b"c"]

    # --- watch ------------------------------------------------------------------------------

    def test_watch_replays_changes_after_a_revision_in_order(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        start = store.txn([Put(ns + b"w/a", b"0")]).revision
        one = store.txn([Put(ns + b"w/a", b"1"), Put(ns + b"w/b", b"1"), Put(ns + b"x", b"1")])
        two = store.txn([Delete(ns + b"w/a"), Delete(ns + b"w/absent"), Put(ns + b"w/c", b"2")])
        store.txn([Put(ns + b"x", b"outside")])
        three = store.txn([Put(ns + b"w/b", SECRET)])
        watch = store.watch(ns + b"w/", after_revision=start)
        events = take(watch, 5)
        watch.close()
        assert [(e.type, e.key, e.value, e.mod_revision) for e in events] == [
            (EventType.PUT, ns + b"w/a", b"1", one.revision),
            (EventType.PUT, ns + b"w/b", b"1", one.revision),
            (EventType.DELETE, ns + b"w/a", b"", two.revision),
            (EventType.PUT, ns + b"w/c", b"2", two.revision),
            (EventType.PUT, ns + b"w/b", SECRET, three.revision),
        ]
        assert SECRET.decode() not in repr(events[-1])

    def test_watch_delivers_live_changes_and_close_ends_it(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        start = now(store, ns)
        watch = store.watch(ns, after_revision=start)
        got: list[Event] = []
        done = threading.Event()

        def consume() -> None:
            for event in watch:
                got.append(event)
                if len(got) == 3:
                    done.set()
            done.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        writer = self.second_client(store)
        writer.txn([Put(ns + b"a", b"1")])
        writer.txn([Put(ns + b"b", b"2")])
        writer.txn([Delete(ns + b"a")])
        assert done.wait(PATIENCE_S)
        # The consumer now blocks waiting for more; close() must end it.
        watch.close()
        consumer.join(PATIENCE_S)
        assert not consumer.is_alive()
        assert [(e.type, e.key, e.mod_revision) for e in got] == [
            (EventType.PUT, ns + b"a", start + 1),
            (EventType.PUT, ns + b"b", start + 2),
            (EventType.DELETE, ns + b"a", start + 3),
        ]

    def test_close_ends_an_idle_watch(self, store: CompactingStore, ns: bytes) -> None:
        watch = store.watch(ns, after_revision=now(store, ns))
        ended = threading.Event()

        def consume() -> None:
            for _ in watch:
                pass
            ended.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        watch.close()
        consumer.join(PATIENCE_S)
        assert ended.is_set()
        assert list(watch) == []

    def test_iterating_a_watch_again_continues_where_it_stopped(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        start = store.txn([Put(ns + b"a", b"1"), Put(ns + b"b", b"1"), Put(ns + b"c", b"1")])
        store.txn([Put(ns + b"d", b"2")])
        watch = store.watch(ns, after_revision=start.revision - 1)
        first = take(watch, 2)
        rest = take(watch, 2)
        watch.close()
        assert [e.key for e in first + rest] == [ns + b"a", ns + b"b", ns + b"c", ns + b"d"]

    def test_watch_from_the_future_waits_for_it(self, store: CompactingStore, ns: bytes) -> None:
        start = now(store, ns)
        watch = store.watch(ns, after_revision=start + 1)
        store.txn([Put(ns + b"a", b"1")])
        store.txn([Put(ns + b"b", b"2")])
        events = take(watch, 1)
        watch.close()
        assert [(e.key, e.mod_revision) for e in events] == [(ns + b"b", start + 2)]

    # --- concurrency ------------------------------------------------------------------------

    def test_concurrent_cas_increments_never_lose_an_update(
        self, store: CompactingStore, ns: bytes
    ) -> None:
        other = self.second_client(store)
        key = ns + b"counter"
        rounds = self.COUNTER_ROUNDS
        run_threads(
            [
                lambda: discard(cas_increment(store, key, rounds)),
                lambda: discard(cas_increment(other, key, rounds)),
            ]
        )
        entry = store.get(key)
        assert entry is not None
        assert int(entry.value) == 2 * rounds


def discard(_: object) -> None:
    """Swallows a return value (threads run callables returning None)."""
