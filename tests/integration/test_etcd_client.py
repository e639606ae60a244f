"""EtcdClient against a real etcd-server: reads, pagination, CAS batches, failover."""

from __future__ import annotations

import pytest

from kinko.store.etcd import EtcdClient

pytestmark = pytest.mark.etcd


def test_put_get_delete_round_trip(etcd: EtcdClient) -> None:
    rev = etcd.put(b"/registry/secrets/ns/a", b"v1")
    kv = etcd.get(b"/registry/secrets/ns/a")
    assert kv is not None
    assert (kv.value, kv.mod_revision, kv.version) == (b"v1", rev, 1)
    assert etcd.delete(b"/registry/secrets/ns/a") is True
    assert etcd.get(b"/registry/secrets/ns/a") is None
