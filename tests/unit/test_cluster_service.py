"""ClusterService over MemoryStore with real provider chains (aescbc, then identity).

No mocks: the chains come from an EncryptionConfiguration text; a second configuration
without the aescbc key plays "the key was destroyed" for the unreadable-object cases.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import count
from typing import NoReturn

import pytest

from kinko.cluster.service import ClusterService, merge_patch
from kinko.crypto.chain import ProviderChain
from kinko.crypto.config import KmsConfig, build_chains, parse_encryption_config
from kinko.errors import (
    AlreadyExists,
    Conflict,
    DeletionRefused,
    Gone,
    Invalid,
    InvalidArgument,
    NotFound,
    UnreadableValue,
)
from kinko.store.memory import MemoryStore
from kinko.store.port import Put

AES_KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def config(secret: str, name: str = "k1") -> str:
    return f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - aescbc:
          keys:
            - name: {name}
              secret: {secret}
      - identity: {{}}
"""


class Chains:
    """A ChainSource whose configuration a test can swap."""

    def __init__(self, text: str) -> None:
        self.set(text)

    def set(self, text: str) -> None:
        self._chains = build_chains(
            parse_encryption_config(text), kms_v2=_no_kms, kms_v1=_no_kms, rng=os.urandom
        )

    def chain_for(self, resource: str) -> ProviderChain:
        return self._chains.chain_for(resource)


def _no_kms(_: KmsConfig) -> NoReturn:
    raise AssertionError("no KMS provider is configured in these tests")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def chains() -> Chains:
    return Chains(config(AES_KEY))


@pytest.fixture
def svc(store: MemoryStore, chains: Chains) -> ClusterService:
    uids = count(1)
    return ClusterService(store, chains, clock=lambda: NOW, new_uid=lambda: f"uid-{next(uids)}")


def secret(name: str, ns: str = "default", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "data": {"password": base64.b64encode(b"hunter2").decode()},
    }
    body.update(extra)
    return body


def configmap(name: str, data: Mapping[str, str], **meta: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **meta},
        "data": dict(data),
    }


def test_create_sets_uid_timestamp_and_version_and_stores_encrypted(
    svc: ClusterService, store: MemoryStore
) -> None:
    made = svc.create("secrets", "default", secret("db"))
    assert made.metadata.uid == "uid-1"
    assert made.metadata.creation_timestamp == NOW.replace(microsecond=0)
    entry = store.get(b"/registry/secrets/default/db")
    assert entry is not None
    assert made.metadata.resource_version == str(entry.mod_revision)
    assert entry.value.startswith(b"k8s:enc:aescbc:v1:k1:")
    assert b"hunter2" not in entry.value
    got = svc.get("secrets", "default", "db")
    assert got == made


def test_stored_plaintext_is_kubernetes_json_without_resource_version(
    svc: ClusterService,
) -> None:
    svc.create("secrets", "default", secret("db"))
    value = svc.objects.read("secrets", b"/registry/secrets/default/db")
    doc = json.loads(value.plaintext)
    assert doc["kind"] == "Secret"
    assert doc["data"] == {"password": base64.b64encode(b"hunter2").decode()}
    assert "resourceVersion" not in doc["metadata"]


def test_string_data_is_merged_and_not_kept(svc: ClusterService) -> None:
    made = svc.create("secrets", "default", secret("db", stringData={"user": "admin"}))
    assert isinstance(made, type(svc.get("secrets", "default", "db")))
    assert dict(svc.get("secrets", "default", "db").data) == {
        "password": b"hunter2",
        "user": b"admin",
    }


def test_create_twice_is_already_exists_and_changes_nothing(
    svc: ClusterService, store: MemoryStore
) -> None:
    svc.create("secrets", "default", secret("db"))
    revision = store.range(b"/").revision
    with pytest.raises(AlreadyExists, match='secrets "db" already exists'):
        svc.create("secrets", "default", secret("db"))
    assert store.range(b"/").revision == revision


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (secret("Bad_Name"), "metadata.name"),
        (secret("db", data={"k": "not base64!"}), "data[k]"),
        (secret("db", spec={}), "spec"),
        (secret("db", type="kubernetes.io/tls"), "data[tls.crt]"),
        ({**secret("db"), "metadata": {"name": "db", "resourceVersion": "7"}}, "metadata"),
        (secret("db", ns="other"), "metadata.namespace"),
    ],
)
def test_bad_create_is_invalid_naming_the_field_and_changes_nothing(
    svc: ClusterService, store: MemoryStore, body: dict[str, object], field: str
) -> None:
    revision = store.range(b"/").revision
    with pytest.raises(Invalid) as info:
        svc.create("secrets", "default", body)
    assert any(c.field.startswith(field) for c in info.value.causes), info.value.causes
    assert "hunter2" not in str(info.value)
    assert store.range(b"/").revision == revision


def test_replace_keeps_uid_and_checks_resource_version(svc: ClusterService) -> None:
    made = svc.create("configmaps", "team-a", configmap("app", {"a": "1"}))
    body = configmap("app", {"a": "2"}, resourceVersion=made.metadata.resource_version)
    new = svc.replace("configmaps", "team-a", "app", body)
    assert new.metadata.uid == made.metadata.uid
    assert int(new.metadata.resource_version) > int(made.metadata.resource_version)
    stale = configmap("app", {"a": "3"}, resourceVersion=made.metadata.resource_version)
    with pytest.raises(Conflict, match="has been modified"):
        svc.replace("configmaps", "team-a", "app", stale)
    unconditional = svc.replace("configmaps", "team-a", "app", configmap("app", {"a": "4"}))
    assert dict(unconditional.data) == {"a": "4"}


def test_replace_refuses_other_name_and_missing_object(svc: ClusterService) -> None:
    svc.create("configmaps", "default", configmap("app", {}))
    with pytest.raises(Invalid, match="does not match the name on the URL"):
        svc.replace("configmaps", "default", "app", configmap("other", {}))
    with pytest.raises(NotFound, match='configmaps "ghost" not found'):
        svc.replace("configmaps", "default", "ghost", configmap("ghost", {}))


def test_immutable_secret_refuses_data_change(svc: ClusterService) -> None:
    svc.create("secrets", "default", secret("db", immutable=True))
    with pytest.raises(Invalid, match="immutable"):
        svc.patch("secrets", "default", "db", {"data": {"password": "eA=="}})


def test_patch_merges_labels_and_string_data(svc: ClusterService) -> None:
    svc.create("secrets", "default", secret("db"))
    patched = svc.patch(
        "secrets",
        "default",
        "db",
        {"metadata": {"labels": {"app": "web"}}, "stringData": {"user": "root"}},
    )
    assert dict(patched.metadata.labels) == {"app": "web"}
    assert dict(patched.data) == {"password": b"hunter2", "user": b"root"}
    removed = svc.patch("secrets", "default", "db", {"metadata": {"labels": None}})
    assert dict(removed.metadata.labels) == {}


@pytest.mark.parametrize("patch", [[], "x", 3])
def test_patch_that_is_no_object_is_invalid_argument(svc: ClusterService, patch: object) -> None:
    svc.create("secrets", "default", secret("db"))
    with pytest.raises(InvalidArgument, match="merge patch"):
        svc.patch("secrets", "default", "db", patch)


def test_patch_with_stale_resource_version_conflicts(svc: ClusterService) -> None:
    made = svc.create("secrets", "default", secret("db"))
    svc.patch("secrets", "default", "db", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(Conflict):
        svc.patch(
            "secrets",
            "default",
            "db",
            {"metadata": {"resourceVersion": made.metadata.resource_version}},
        )


def test_patch_cannot_rename(svc: ClusterService) -> None:
    svc.create("secrets", "default", secret("db"))
    with pytest.raises(Invalid, match="does not match"):
        svc.patch("secrets", "default", "db", {"metadata": {"name": "other"}})


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386_examples(target: object, patch: object, expected: object) -> None:
    assert merge_patch(target, patch) == expected


def test_delete_returns_object_and_checks_preconditions(
    svc: ClusterService, store: MemoryStore
) -> None:
    made = svc.create("secrets", "default", secret("db"))
    with pytest.raises(Conflict, match="Precondition failed"):
        svc.delete("secrets", "default", "db", resource_version="1")
    with pytest.raises(Conflict, match="uid"):
        svc.delete("secrets", "default", "db", uid="nope")
    gone = svc.delete("secrets", "default", "db", uid=made.metadata.uid)
    assert gone.metadata.name == "db"
    assert store.get(b"/registry/secrets/default/db") is None
    with pytest.raises(NotFound):
        svc.delete("secrets", "default", "db")


def test_list_by_namespace_and_all_namespaces_in_name_order(svc: ClusterService) -> None:
    for ns, name in [("b", "x"), ("a", "z"), ("a", "y"), ("default", "w")]:
        svc.create("configmaps", ns, configmap(name, {}))
    svc.create("secrets", "a", secret("s", ns="a"))
    assert [o.metadata.name for o in svc.list("configmaps", "a").items] == ["y", "z"]
    everything = svc.list("configmaps", None).items
    assert [(o.metadata.namespace, o.metadata.name) for o in everything] == [
        ("a", "y"),
        ("a", "z"),
        ("b", "x"),
        ("default", "w"),
    ]


class Labels:
    def __init__(self, **want: str) -> None:
        self.want = want

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.want.items())


def test_list_with_selector_limit_and_continue_pages_one_snapshot(svc: ClusterService) -> None:
    for i in range(10):
        labels = {"app": "web" if i % 2 == 0 else "db"}
        svc.create("configmaps", "ns", configmap(f"cm-{i}", {}, labels=labels))
    first = svc.list("configmaps", "ns", selector=Labels(app="web"), limit=2)
    assert [o.metadata.name for o in first.items] == ["cm-0", "cm-2"]
    assert first.continue_token
    svc.create("configmaps", "ns", configmap("cm-3a", {}, labels={"app": "web"}))
    names: list[str] = []
    token = first.continue_token
    while token:
        page = svc.list(
            "configmaps", "ns", selector=Labels(app="web"), limit=2, continue_token=token
        )
        assert page.resource_version == first.resource_version
        names += [o.metadata.name for o in page.items]
        token = page.continue_token
    assert names == ["cm-4", "cm-6", "cm-8"]  # cm-3a was created after the snapshot


@pytest.mark.parametrize("token", ["!!", "e30", base64.urlsafe_b64encode(b'{"v":1}').decode()])
def test_unsigned_continue_token_is_refused_as_expired(svc: ClusterService, token: str) -> None:
    with pytest.raises(Gone, match="continue token is not valid"):
        svc.list("secrets", "default", continue_token=token)


def test_a_continue_token_cannot_pick_its_revision_to_read_deleted_objects(
    svc: ClusterService,
) -> None:
    # Regression: an unsigned token let a caller page through any revision the store kept,
    # deleted Secrets' data included.
    made = svc.create("secrets", "default", secret("gone"))
    svc.create("secrets", "default", secret("kept"))
    svc.create("secrets", "default", secret("kept2"))
    svc.delete("secrets", "default", "gone")
    token = svc.list("secrets", "default", limit=1).continue_token
    body, _, tag = token.partition(".")
    doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc.update(rv=int(made.metadata.resource_version), start="/registry/secrets/default/")
    forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    with pytest.raises(Gone):
        svc.list("secrets", "default", continue_token=f"{forged}.{tag}")


def test_continue_tokens_of_another_service_instance_are_refused(
    store: MemoryStore, chains: Chains
) -> None:
    first = ClusterService(store, chains, clock=lambda: NOW)
    for i in range(3):
        first.create("secrets", "default", secret(f"s{i}"))
    token = first.list("secrets", "default", limit=1).continue_token
    restarted = ClusterService(store, chains, clock=lambda: NOW)
    with pytest.raises(Gone, match="list again"):
        restarted.list("secrets", "default", continue_token=token)
    shared = ClusterService(store, chains, clock=lambda: NOW, continue_key=b"k" * 32)
    again = ClusterService(store, chains, clock=lambda: NOW, continue_key=b"k" * 32)
    token = shared.list("secrets", "default", limit=1).continue_token
    assert [o.metadata.name for o in again.list("secrets", "default", continue_token=token).items]


def test_continue_token_cannot_widen_a_namespace_list(svc: ClusterService) -> None:
    for ns in ("a", "b"):
        for i in range(3):
            svc.create("secrets", ns, secret(f"s{i}", ns=ns))
    token = svc.list("secrets", "a", limit=1).continue_token
    with pytest.raises(InvalidArgument, match="another list"):
        svc.list("secrets", "b", continue_token=token)
    with pytest.raises(InvalidArgument, match="another list"):
        svc.list("configmaps", "a", continue_token=token)


def test_compacted_continue_snapshot_is_gone() -> None:
    store = MemoryStore(history=2)
    svc = ClusterService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    for i in range(4):
        svc.create("secrets", "default", secret(f"s{i}"))
    token = svc.list("secrets", "default", limit=1).continue_token
    for i in range(4):
        svc.patch("secrets", "default", f"s{i}", {"metadata": {"labels": {"n": str(i)}}})
    with pytest.raises(Gone, match="list again"):
        svc.list("secrets", "default", continue_token=token)


@pytest.mark.parametrize("limit", [0, -1])
def test_bad_limit_is_invalid_argument(svc: ClusterService, limit: int) -> None:
    with pytest.raises(InvalidArgument, match="limit"):
        svc.list("secrets", "default", limit=limit)


def test_unreadable_objects_are_reported_not_raised_and_deletable_only_when_unreadable(
    svc: ClusterService, chains: Chains, store: MemoryStore
) -> None:
    svc.create("secrets", "default", secret("old"))
    chains.set(config(OTHER_KEY, name="k2"))  # k1 is gone: no provider opens the old value
    svc.create("secrets", "default", secret("new"))
    listed = svc.list("secrets", "default")
    assert [o.metadata.name for o in listed.items] == ["new"]
    assert [(u.namespace, u.name) for u in listed.unreadable] == [("default", "old")]
    with pytest.raises(UnreadableValue, match="/registry/secrets/default/old"):
        svc.get("secrets", "default", "old")
    with pytest.raises(DeletionRefused):
        svc.delete_unreadable("secrets", "default", "new")
    svc.delete_unreadable("secrets", "default", "old")
    assert store.get(b"/registry/secrets/default/old") is None
    with pytest.raises(NotFound):
        svc.delete_unreadable("secrets", "default", "old")


def test_value_that_decrypts_to_garbage_is_unreadable_listed_and_force_deletable(
    svc: ClusterService, store: MemoryStore, chains: Chains
) -> None:
    # What an aescbc value read with a wrong key looks like once in 256 tries: the padding
    # passes and the plaintext is garbage. It must not break the LIST.
    key = b"/registry/secrets/default/raw"
    store.txn([Put(key, chains.chain_for("secrets").seal(b"not json", aad=key), 0)])
    svc.create("secrets", "default", secret("fine"))
    with pytest.raises(UnreadableValue, match="not a valid object"):
        svc.get("secrets", "default", "raw")
    listed = svc.list("secrets", "default")
    assert [o.metadata.name for o in listed.items] == ["fine"]
    assert [u.name for u in listed.unreadable] == ["raw"]
    assert "not a valid object" in listed.unreadable[0].reason
    with pytest.raises(UnreadableValue):
        svc.delete("secrets", "default", "raw")
    svc.delete_unreadable("secrets", "default", "raw")
    assert store.get(key) is None


def test_unknown_resource_is_not_found(svc: ClusterService) -> None:
    with pytest.raises(NotFound, match="pods"):
        svc.get("pods", "default", "x")
