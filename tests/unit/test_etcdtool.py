"""The etcd use cases over the in-memory twin: resource parsing, audit counts, CAS migration."""

from __future__ import annotations

import os

import pytest

from kinko import etcdtool
from kinko.crypto.config import EncryptionChains, build_chains, parse_encryption_config
from kinko.crypto.types import KmsV1Unwrapper, KmsV2Keys
from kinko.errors import DecryptionError, InvalidArgument, NotFound
from kinko.store.etcd import KeyValue
from kinko.store.etcd_memory import MemoryEtcd
from tests.etcd_values import Keys, config_text, configmap_payload, secret_payload


def _no_kms(_: object) -> KmsV2Keys:
    raise AssertionError("no KMS in these tests")


def _no_kms_v1(_: object) -> KmsV1Unwrapper:
    raise AssertionError("no KMS in these tests")


def chains_of(keys: Keys, *providers: str) -> EncryptionChains:
    config = parse_encryption_config(config_text(keys, *providers))
    return build_chains(config, kms_v2=_no_kms, kms_v1=_no_kms_v1, rng=os.urandom)


@pytest.mark.parametrize(
    ("key", "prefix", "resource"),
    [
        (b"/registry/secrets/ns/name", None, "secrets"),
        (b"/registry/namespaces/kube-system", None, "namespaces"),
        (b"/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/ns/n", None, "secrets"),
        (b"/registry/stable.example.com/crontabs/ns/c", None, "crontabs.stable.example.com"),
        (b"/registry/secrets/registry/n", None, "secrets"),
        (b"/registry/deployments/ns/d", None, "deployments"),
        (b"/registry/secrets", None, None),
        (b"/registry/", None, None),
        (b"/kube/secrets/ns/n", None, None),
        (b"/kube/secrets/ns/n", "/kube", "secrets"),
        (b"/kube/secrets/ns/n", "kube/", "secrets"),
        (b"/other/secrets/ns/n", "/kube", None),
        (b"/secrets/ns/n", "/", "secrets"),
        (b"/registry/\xff/ns/n", None, None),
    ],
)
def test_resource_from_key(key: bytes, prefix: str | None, resource: str | None) -> None:
    assert etcdtool.resource_from_key(key, etcd_prefix=prefix) == resource


def test_resolve_resource_prefers_the_explicit_one_and_else_explains() -> None:
    assert etcdtool.resolve_resource(b"/x/y", resource="secrets", etcd_prefix=None) == "secrets"
    with pytest.raises(InvalidArgument, match="cannot tell the resource of storage key /x/y"):
        etcdtool.resolve_resource(b"/x/y", resource=None, etcd_prefix=None)


def _seed(store: MemoryEtcd, keys: Keys) -> dict[str, bytes]:
    """A mix under /registry/: plaintext, old key, current key, garbage, unknown prefix."""
    seeded = {
        "/registry/secrets/ns/plain": secret_payload("plain"),
        "/registry/secrets/ns/old": keys.seal(
            "old", secret_payload("old"), b"/registry/secrets/ns/old"
        ),
        "/registry/secrets/ns/new": keys.seal(
            "gcm", secret_payload("new"), b"/registry/secrets/ns/new"
        ),
        "/registry/secrets/ns/garbage": b"k8s:enc:aesgcm:v1:gcm:" + os.urandom(40),
        "/registry/configmaps/ns/old": keys.seal(
            "old", configmap_payload("old"), b"/registry/configmaps/ns/old"
        ),
        "/registry/configmaps/ns/alien": b"k8s:enc:aesgcm:v1:elsewhere:" + os.urandom(40),
        "/registry/": b"odd",
    }
    for key, value in seeded.items():
        store.put(key.encode(), value)
    return seeded


def test_audit_counts_every_kind_of_value() -> None:
    keys = Keys()
    store = MemoryEtcd()
    _seed(store, keys)
    report = etcdtool.audit(store, chains_of(keys, "gcm", "old", "identity"), b"/registry/")
    assert report.total == 7
    assert report.no_resource == 1
    assert (report.current, report.stale, report.undecryptable, report.plaintext) == (1, 3, 2, 1)
    assert report.resources["secrets"].to_json_dict() == {
        "total": 4,
        "current": 1,
        "stale": 2,
        "undecryptable": 1,
        "unavailable": 0,
        "plaintext": 1,
    }
    assert sorted(report.undecryptable_keys) == [
        "/registry/configmaps/ns/alien",
        "/registry/secrets/ns/garbage",
    ]
    assert report.providers == {
        ("identity", "", None): 1,
        ("aescbc", "old", None): 2,
        ("aesgcm", "gcm", None): 2,
        ("aesgcm", "elsewhere", None): 1,
    }


def test_plaintext_without_identity_is_undecryptable_unless_opted_in() -> None:
    keys = Keys()
    store = MemoryEtcd()
    store.put(b"/registry/secrets/ns/plain", secret_payload("plain"))
    chains = chains_of(keys, "gcm")
    assert etcdtool.audit(store, chains, b"/registry/").undecryptable == 1
    opted = etcdtool.audit(store, chains, b"/registry/", read_unprefixed=True)
    assert (opted.stale, opted.plaintext, opted.undecryptable) == (1, 1, 0)


def test_reencrypt_rewrites_exactly_the_stale_values_and_is_idempotent() -> None:
    keys = Keys()
    store = MemoryEtcd()
    seeded = _seed(store, keys)
    chains = chains_of(keys, "gcm", "old", "identity")
    before = {k: store.get(k.encode()) for k in seeded}
    report = etcdtool.reencrypt(store, chains, b"/registry/", batch_size=2)
    assert (report.scanned, report.rewritten, report.current) == (7, 3, 1)
    assert (report.undecryptable, report.conflicts, report.no_resource) == (2, 0, 1)
    for name in ("plain", "old"):
        key = f"/registry/secrets/ns/{name}".encode()
        kv = store.get(key)
        assert kv is not None
        assert kv.value.startswith(b"k8s:enc:aesgcm:v1:gcm:")
        assert chains.chain_for("secrets").open(kv.value, aad=key).plaintext == secret_payload(name)
    for untouched in ("/registry/secrets/ns/new", "/registry/secrets/ns/garbage", "/registry/"):
        assert store.get(untouched.encode()) == before[untouched]
    revision = store.revision
    again = etcdtool.reencrypt(store, chains, b"/registry/")
    assert (again.rewritten, again.current, again.undecryptable) == (0, 4, 2)
    assert store.revision == revision


def test_a_write_between_read_and_cas_wins() -> None:
    keys = Keys()
    store = MemoryEtcd()
    key = b"/registry/secrets/ns/old"
    other = b"/registry/secrets/ns/old2"
    store.put(key, keys.seal("old", secret_payload("old"), key))
    store.put(other, keys.seal("old", secret_payload("old2"), other))
    read: list[KeyValue] = list(store.range_prefix(b"/registry/"))
    concurrent = keys.seal("gcm", secret_payload("old", password=b"newer"), key)
    store.put(key, concurrent)
    report = etcdtool.reencrypt_values(store, chains_of(keys, "gcm", "old"), read)
    assert (report.rewritten, report.conflicts) == (1, 1)
    assert report.conflict_keys == ["/registry/secrets/ns/old"]
    kv = store.get(key)
    assert kv is not None
    assert kv.value == concurrent


def test_dry_run_counts_and_writes_nothing() -> None:
    keys = Keys()
    store = MemoryEtcd()
    _seed(store, keys)
    revision = store.revision
    report = etcdtool.reencrypt(
        store, chains_of(keys, "gcm", "old", "identity"), b"/registry/", dry_run=True
    )
    assert (report.rewritten, report.dry_run) == (3, True)
    assert store.revision == revision


def test_progress_reports_every_value_once() -> None:
    keys = Keys()
    store = MemoryEtcd()
    _seed(store, keys)
    seen: list[int] = []
    etcdtool.reencrypt(
        store,
        chains_of(keys, "gcm", "old", "identity"),
        b"/registry/",
        batch_size=2,
        progress=seen.append,
        dry_run=True,
    )
    assert sum(seen) == 7


def test_reencrypt_of_one_value_with_an_explicit_resource() -> None:
    keys = Keys()
    store = MemoryEtcd()
    key = b"/custom/thing"
    store.put(key, keys.seal("old", b"payload", key))
    chains = chains_of(keys, "gcm", "old")
    kv = etcdtool.fetch(store, key)
    report = etcdtool.reencrypt_values(store, chains, [kv])
    assert report.no_resource == 1
    report = etcdtool.reencrypt_values(store, chains, [kv], resource="secrets")
    assert report.rewritten == 1


def test_fetch_of_a_missing_key_is_not_found() -> None:
    with pytest.raises(NotFound, match="/registry/secrets/ns/missing"):
        etcdtool.fetch(MemoryEtcd(), b"/registry/secrets/ns/missing")


def test_reseal_binds_the_new_value_to_the_key() -> None:
    keys = Keys()
    chains = chains_of(keys, "gcm", "old")
    key = b"/registry/secrets/ns/a"
    sealed = etcdtool.reseal_value(chains, key, keys.seal("old", b"pt", key))
    assert etcdtool.decrypt_value(chains, key, sealed).plaintext == b"pt"
    with pytest.raises(DecryptionError):
        etcdtool.decrypt_value(chains, b"/registry/secrets/ns/b", sealed)


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(InvalidArgument, match="batch size"):
        etcdtool.reencrypt_values(MemoryEtcd(), chains_of(Keys(), "gcm"), [], batch_size=0)
