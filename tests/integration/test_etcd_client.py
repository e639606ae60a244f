"""EtcdClient against a real etcd-server: reads, pagination, CAS batches, TLS, failover."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kinko.errors import InvalidArgument, StoreUnavailable
from kinko.store.etcd import MAX_TXN_OPS, CasPut, EtcdClient, prefix_range_end
from tests.integration.etcd_fixture import free_port, make_tls_files, running_cluster

pytestmark = pytest.mark.etcd


def test_put_get_delete_round_trip(etcd: EtcdClient) -> None:
    rev = etcd.put(b"/registry/secrets/ns/a", b"v1")
    kv = etcd.get(b"/registry/secrets/ns/a")
    assert kv is not None
    assert (kv.value, kv.mod_revision, kv.create_revision, kv.version) == (b"v1", rev, rev, 1)
    rev2 = etcd.put(b"/registry/secrets/ns/a", b"v2")
    kv = etcd.get(b"/registry/secrets/ns/a")
    assert kv is not None
    assert (kv.value, kv.mod_revision, kv.create_revision, kv.version) == (b"v2", rev2, rev, 2)
    assert "v2" not in repr(kv)
    assert etcd.delete(b"/registry/secrets/ns/a") is True
    assert etcd.delete(b"/registry/secrets/ns/a") is False
    assert etcd.get(b"/registry/secrets/ns/a") is None


def test_range_prefix_pages_through_every_key_in_order(etcd: EtcdClient) -> None:
    keys = [f"/registry/secrets/ns/s{i:04d}".encode() for i in range(1234)]
    _fill(etcd, keys)
    etcd.put(b"/registry/secretsX", b"outside")
    etcd.put(b"/registry/secret", b"outside")
    got = [kv.key for kv in etcd.range_prefix(b"/registry/secrets/", limit=100)]
    assert got == keys
    assert etcd.count_prefix(b"/registry/secrets/") == 1234
    assert etcd.count_prefix(b"") == 1236


def test_range_prefix_is_one_snapshot(etcd: EtcdClient) -> None:
    keys = [f"/registry/configmaps/ns/c{i:03d}".encode() for i in range(30)]
    _fill(etcd, keys)
    walk = etcd.range_prefix(b"/registry/configmaps/", limit=10)
    first = [next(walk) for _ in range(10)]
    etcd.put(b"/registry/configmaps/ns/c999", b"late")
    etcd.put(keys[-1], b"changed")
    rest = list(walk)
    assert [kv.key for kv in first + rest] == keys
    assert rest[-1].value == b"v"
    latest = etcd.get(keys[-1])
    assert latest is not None
    assert latest.value == b"changed"


def test_oversize_pages_shrink_instead_of_failing(etcd_endpoints: list[str]) -> None:
    with EtcdClient(etcd_endpoints, max_receive_bytes=64 * 1024) as small:
        keys = [f"/registry/secrets/ns/big{i:02d}".encode() for i in range(12)]
        for key in keys:
            small.put(key, b"x" * 20_000)
        got = [kv.key for kv in small.range_prefix(b"/registry/secrets/", limit=500)]
        assert got == keys
        small.put(b"/registry/secrets/ns/huge", b"y" * 100_000)
        with pytest.raises(StoreUnavailable, match="exceeds the 65536-byte receive limit"):
            list(small.range_prefix(b"/registry/secrets/ns/huge"))


def test_cas_batch_applies_winners_and_reports_losers(etcd: EtcdClient) -> None:
    keys = [f"/registry/secrets/ns/k{i:03d}".encode() for i in range(300)]
    _fill(etcd, keys)
    read = {kv.key: kv for kv in etcd.range_prefix(b"/registry/secrets/")}
    losers = {keys[5], keys[130], keys[131], keys[299]}
    for key in losers:
        etcd.put(key, b"concurrent")
    etcd.delete(keys[200])
    ops = [CasPut(key, b"migrated", read[key].mod_revision) for key in keys]
    results = etcd.cas_batch(ops)
    assert [key for key, ok in zip(keys, results, strict=True) if not ok] == sorted(
        [*losers, keys[200]]
    )
    for key in keys:
        kv = etcd.get(key)
        if key == keys[200]:
            assert kv is None
        elif key in losers:
            assert kv is not None
            assert kv.value == b"concurrent"
        else:
            assert kv is not None
            assert kv.value == b"migrated"
    # The same batch again loses everywhere: nothing is written twice.
    assert not any(etcd.cas_batch(ops))


def test_cas_batch_splits_large_values_under_the_request_limit(etcd: EtcdClient) -> None:
    """12 values of 200 KB exceed etcd's 1.5 MiB request limit as one txn."""
    keys = [f"/registry/secrets/ns/large{i:02d}".encode() for i in range(12)]
    assert all(etcd.cas_batch([CasPut(key, os.urandom(200_000), 0) for key in keys]))
    assert etcd.count_prefix(b"/registry/secrets/ns/large") == 12
    # One value over the server's request limit is the caller's error, not an outage.
    with pytest.raises(InvalidArgument, match="larger than max"):
        etcd.cas_batch([CasPut(b"/registry/secrets/ns/huge", os.urandom(2_200_000), 0)])


def test_cas_with_revision_zero_creates_only_if_absent(etcd: EtcdClient) -> None:
    etcd.put(b"/registry/secrets/ns/exists", b"old")
    results = etcd.cas_batch(
        [
            CasPut(b"/registry/secrets/ns/exists", b"new", 0),
            CasPut(b"/registry/secrets/ns/fresh", b"new", 0),
        ]
    )
    assert results == [False, True]


def test_cas_batch_refuses_a_key_twice_and_writes_nothing(etcd: EtcdClient) -> None:
    revision = etcd.put(b"/registry/secrets/ns/a", b"v")
    with pytest.raises(InvalidArgument, match="appears twice"):
        etcd.cas_batch(
            [
                CasPut(b"/registry/secrets/ns/a", b"x", revision),
                CasPut(b"/registry/secrets/ns/a", b"y", revision),
            ]
        )
    kv = etcd.get(b"/registry/secrets/ns/a")
    assert kv is not None
    assert kv.value == b"v"


def test_etcd_refusals_are_invalid_argument(etcd: EtcdClient) -> None:
    with pytest.raises(InvalidArgument, match="key is not provided"):
        etcd.put(b"", b"v")


def test_status_names_the_member(etcd: EtcdClient) -> None:
    status = etcd.status()
    assert status.version.startswith("3.4")
    assert status.leader == status.member_id
    assert status.endpoint == etcd.endpoints[0]


def test_reads_and_writes_skip_a_dead_endpoint(etcd_endpoints: list[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with EtcdClient([dead, *etcd_endpoints], timeout=1.0) as client:
        client.put(b"/registry/secrets/ns/failover", b"v")
        kv = client.get(b"/registry/secrets/ns/failover")
        assert kv is not None
        assert kv.value == b"v"


def test_no_reachable_endpoint_is_store_unavailable_and_nothing_sent() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with EtcdClient(dead, timeout=0.5) as client:
        with pytest.raises(StoreUnavailable, match="no endpoint answered"):
            client.get(b"/registry/secrets/ns/a")
        with pytest.raises(StoreUnavailable, match="nothing was sent"):
            client.put(b"/registry/secrets/ns/a", b"v")


@pytest.mark.parametrize(
    ("endpoints", "fragment"),
    [
        ([], "no etcd endpoints"),
        (["ftp://127.0.0.1:1"], "must look like"),
        (["http://127.0.0.1:1/path"], "scheme://host:port only"),
    ],
)
def test_bad_endpoints_are_refused(endpoints: list[str], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        EtcdClient(endpoints)


def test_tls_endpoint_with_client_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "pki")
    with running_cluster(tmp_path / "etcd-tls", tls=tls) as cluster:
        url = cluster.endpoints[0]
        assert url.startswith("https://")
        with EtcdClient([url], cacert=tls.ca, cert=tls.client_cert, key=tls.client_key) as client:
            client.put(b"/registry/secrets/ns/tls", b"v")
            kv = client.get(b"/registry/secrets/ns/tls")
            assert kv is not None
            assert kv.value == b"v"
        # Without the client certificate the server refuses the handshake.
        with (
            EtcdClient([url], cacert=tls.ca, timeout=1.0) as anonymous,
            pytest.raises(StoreUnavailable),
        ):
            anonymous.get(b"/registry/secrets/ns/tls")
        with pytest.raises(InvalidArgument, match="uses http://"):
            EtcdClient([url.replace("https", "http")], cacert=tls.ca)


def test_three_members_write_via_one_read_via_the_others(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "etcd3", size=3) as cluster:
        first, second, third = cluster.endpoints
        with EtcdClient([first]) as writer:
            writer.put(b"/registry/secrets/ns/replicated", b"v")
        for url in (second, third):
            with EtcdClient([url]) as reader:
                kv = reader.get(b"/registry/secrets/ns/replicated")
                assert kv is not None
                assert kv.value == b"v"
        # With one member gone, a client of all three still reads and writes.
        cluster.members[0].stop()
        with EtcdClient(cluster.endpoints, timeout=2.0) as client:
            client.put(b"/registry/secrets/ns/after", b"w")
            kv = client.get(b"/registry/secrets/ns/after")
            assert kv is not None
            assert kv.value == b"w"


def test_prefix_range_end_rule() -> None:
    assert prefix_range_end(b"/registry/") == b"/registry0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"
    assert prefix_range_end(b"") == b"\x00"


def _fill(etcd: EtcdClient, keys: list[bytes]) -> None:
    for start in range(0, len(keys), MAX_TXN_OPS):
        etcd.cas_batch([CasPut(key, b"v", 0) for key in keys[start : start + MAX_TXN_OPS]])
