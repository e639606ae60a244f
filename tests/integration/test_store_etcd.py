"""The Store contract on a real etcd-server, plus what only a cluster has: members and failover."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinko.errors import StoreUnavailable
from kinko.gen.etcdpb import rpc_pb2
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from kinko.store.port import Delete, EventType, Put, Store
from tests.integration.etcd_fixture import EtcdCluster, EtcdMember, running_cluster
from tests.store_contract import (
    PATIENCE_S,
    CompactingStore,
    StoreContract,
    take,
    walk,
)

pytestmark = pytest.mark.etcd


class TestEtcdStore(StoreContract):
    #: Each increment is two round trips of about 1 ms; keep the test short.
    COUNTER_ROUNDS = 50

    @pytest.fixture
    def store(self, etcd_server: EtcdCluster) -> Iterator[EtcdStore]:
        self._clients: list[EtcdClient] = []
        with EtcdClient(etcd_server.endpoints) as client:
            yield EtcdStore(client)
        for other in self._clients:
            other.close()

    def second_client(self, store: CompactingStore) -> CompactingStore:
        assert isinstance(store, EtcdStore)
        client = EtcdClient(store.client.endpoints)
        self._clients.append(client)
        return EtcdStore(client)


def test_three_members_write_via_one_read_and_watch_via_another(
    etcd_cluster3: EtcdCluster,
) -> None:
    first, second, third = etcd_cluster3.endpoints
    ns = b"/t/members/"
    with EtcdClient([first]) as a, EtcdClient([second]) as b, EtcdClient([third]) as c:
        writer, reader, watcher = EtcdStore(a), EtcdStore(b), EtcdStore(c)
        start = reader.range(ns).revision
        watch = watcher.watch(ns, after_revision=start)
        one = writer.txn([Put(ns + b"x", b"1", expect=0), Put(ns + b"y", b"1", expect=0)])
        two = writer.txn([Put(ns + b"x", b"2", expect=one.revision), Delete(ns + b"y")])
        # Reads are linearizable: a member that did not take the write still returns it.
        entry = reader.get(ns + b"x")
        assert entry is not None
        assert (entry.value, entry.mod_revision) == (b"2", two.revision)
        assert [e.key for e in reader.range(ns, revision=one.revision).entries] == [
            ns + b"x",
            ns + b"y",
        ]
        # A guard read on one member holds on another.
        assert not reader.txn([Put(ns + b"x", b"3", expect=one.revision)]).succeeded
        assert reader.txn([Put(ns + b"x", b"3", expect=two.revision)]).succeeded
        events = take(watch, 5)
        watch.close()
        assert [(e.type, e.key, e.mod_revision) for e in events] == [
            (EventType.PUT, ns + b"x", one.revision),
            (EventType.PUT, ns + b"y", one.revision),
            (EventType.PUT, ns + b"x", two.revision),
            (EventType.DELETE, ns + b"y", two.revision),
            (EventType.PUT, ns + b"x", two.revision + 1),
        ]


def test_a_killed_leader_loses_no_acknowledged_write_and_the_watch_moves_on(
    tmp_path: Path,
) -> None:
    """SIGKILL the leader while two writers increment one counter by CAS.

    A txn whose outcome is unknown raises StoreUnavailable; the writer's retry carries a guard
    that fails if the earlier attempt landed, so every increment lands exactly once. The watch
    opened on the dead member resumes on another one without losing or repeating a revision.
    """
    with running_cluster(tmp_path / "etcd3", size=3) as cluster:
        leader = _leader(cluster)
        # The leader first in every list: the writers and the watch start on it.
        order = [leader.client_url] + [u for u in cluster.endpoints if u != leader.client_url]
        key = b"/t/failover/counter"
        # Each writer does WARM increments before the kill and WARM more after it.
        warm = 15
        with EtcdClient(order, timeout=2.0) as one, EtcdClient(order, timeout=2.0) as two:
            stores = (EtcdStore(one), EtcdStore(two))
            start = stores[0].range(b"/t/failover/").revision
            watch = stores[0].watch(b"/t/failover/", after_revision=start)
            assert watch.endpoint == leader.client_url
            killed = threading.Event()
            done: dict[str, int] = {}
            ready = [threading.Event(), threading.Event()]
            finished = [threading.Event(), threading.Event()]

            def writer(n: int, store: Store) -> None:
                count, after_kill = 0, 0
                while after_kill < warm:
                    marker = f"/t/failover/done/{n}/{count}".encode()
                    _increment_through_failures(store, key, marker)
                    count += 1
                    if killed.is_set():
                        after_kill += 1
                    elif count >= warm:
                        ready[n].set()
                        killed.wait(PATIENCE_S)
                done[f"writer{n}"] = count
                finished[n].set()

            threads = [
                threading.Thread(target=writer, args=(n, store)) for n, store in enumerate(stores)
            ]
            for thread in threads:
                thread.start()
            assert all(event.wait(PATIENCE_S) for event in ready)
            assert leader.process is not None
            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait(PATIENCE_S)
            killed.set()
            for thread in threads:
                thread.join(PATIENCE_S * 3)
                assert not thread.is_alive()
            assert all(event.is_set() for event in finished)
            total = sum(done.values())
            entry = stores[1].get(key)
            assert entry is not None
            assert int(entry.value) == total
            # Every increment is one txn and one revision: the counter and a marker.
            events = [e for e in take(watch, 2 * total) if e.key == key]
            assert [int(e.value) for e in events] == list(range(1, total + 1))
            assert [e.mod_revision for e in events] == list(range(start + 1, start + total + 1))
            # The watch started on the leader; it now streams from a survivor.
            assert watch.endpoint != leader.client_url
            watch.close()


def test_a_write_to_a_frozen_member_reports_an_unknown_outcome(tmp_path: Path) -> None:
    """A txn sent to a member that stops answering is never retried elsewhere."""
    with running_cluster(tmp_path / "etcd3", size=3) as cluster:
        frozen, *others = cluster.members
        with (
            EtcdClient([frozen.client_url], timeout=1.0) as only,
            EtcdClient([frozen.client_url, *(m.client_url for m in others)], timeout=1.0) as all3,
        ):
            store, failover = EtcdStore(only), EtcdStore(all3)
            assert store.get(b"/t/frozen") is None  # the endpoint answered just now
            failover.txn([Put(b"/t/frozen", b"before")])
            _signal(frozen, signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailable, match="outcome is unknown"):
                    store.txn([Put(b"/t/frozen", b"v", expect=0)])
                # A read is retried on the next endpoint.
                entry = failover.get(b"/t/frozen")
                assert entry is not None
                assert entry.value == b"before"
                assert [e.key for e in failover.range(b"/t/").entries] == [b"/t/frozen"]
                # Opening a watch is a read too: it gives up on the frozen member in time.
                with pytest.raises(StoreUnavailable, match="no endpoint answered"):
                    store.watch(b"/t/", after_revision=1)
                create = rpc_pb2.WatchCreateRequest(key=b"/t/", range_end=b"/t0")
                with pytest.raises(StoreUnavailable, match=r"Watch: no endpoint.*DEADLINE"):
                    only.watch(create)
                watch = failover.watch(b"/t/", after_revision=1)
                assert watch.endpoint != frozen.client_url
                assert [e.value for e in take(watch, 1)] == [b"before"]
                watch.close()
            finally:
                _signal(frozen, signal.SIGCONT)


def _increment_through_failures(store: Store, key: bytes, marker: bytes) -> None:
    """One CAS increment that survives a failover.

    The txn also creates ``marker`` if absent, so after an unknown outcome a retry can tell
    whether the earlier attempt landed: then the marker's guard fails and nothing is written
    twice.
    """
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            entry = store.get(key)
            value = int(entry.value) + 1 if entry else 1
            ops = [
                Put(key, str(value).encode(), expect=entry.mod_revision if entry else 0),
                Put(marker, b"", expect=0),
            ]
            result = store.txn(ops)
            if result.succeeded or 1 in result.failed:
                return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the cluster did not recover"
            time.sleep(0.05)  # An election takes about a second; do not spin meanwhile.


def _leader(cluster: EtcdCluster) -> EtcdMember:
    with EtcdClient(cluster.endpoints) as client:
        leader_id = client.status().leader
    for member in cluster.members:
        with EtcdClient([member.client_url]) as client:
            if client.status().member_id == leader_id:
                return member
    raise AssertionError("no member is the leader")


def _signal(member: EtcdMember, signum: int) -> None:
    assert member.process is not None
    os.kill(member.process.pid, signum)


def test_pages_too_large_for_one_response_shrink(etcd_server: EtcdCluster) -> None:
    ns = f"/t/{uuid.uuid4().hex}/".encode()
    with EtcdClient(etcd_server.endpoints, max_receive_bytes=64 * 1024) as client:
        store = EtcdStore(client)
        keys = [ns + b"big%02d" % i for i in range(12)]
        for key in keys:
            store.txn([Put(key, bytes(20_000), expect=0)])
        first = store.range(ns, limit=500)
        assert first.more
        assert 1 <= len(first.entries) < 12
        assert [e.key for e in walk(store, ns, limit=500)] == keys
