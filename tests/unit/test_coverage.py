"""The coverage report over a MemoryStore with real provider chains.

The KMS v2 provider is the base64 twin of ``tests.unit.fakes`` with kinko-shaped key_ids, so
the report's parsing of ``kinko-rk-<root>-v<version>`` is checked; values are sealed by the
same transformers a cluster would use, then the report is compared with what was written.
"""

from __future__ import annotations

import json
import os

import pytest

from kinko.cluster.coverage import (
    IDENTITY,
    SAMPLE,
    UNKNOWN,
    coverage_for,
    coverage_report,
    prefix_scan,
)
from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import AesCbc, Identity, KmsV2
from kinko.errors import InvalidArgument
from kinko.store.memory import MemoryStore
from kinko.store.port import Put
from tests.unit.fakes import Base64KmsV2Keys

ROOT = "0b9c8a53-3f51-4e0a-9d6e-2f6b8f1c5a10"
V1 = "11111111-1111-4111-8111-111111111111"
V2 = "22222222-2222-4222-8222-222222222222"
KEY_ID_1 = f"kinko-rk-{ROOT}-v{V1}"
KEY_ID_2 = f"kinko-rk-{ROOT}-v{V2}"
KMS_PREFIX = "k8s:enc:kms:v2:kinko:"
CBC_PREFIX = "k8s:enc:aescbc:v1:k1:"


class World:
    """A store, a KMS twin on key_id 1, and transformers to seal values with."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.keys = Base64KmsV2Keys(bytes(range(32)), key_id=KEY_ID_1)
        self.kms = KmsV2("kinko", self.keys, rng=os.urandom)
        self.cbc = AesCbc("k1", bytes(range(32)), rng=os.urandom)
        self.identity = Identity()
        self.chain = ProviderChain([self.kms, self.cbc, self.identity])

    def put(
        self, name: str, sealed_by: KmsV2 | AesCbc | Identity | None, *, raw: bytes = b""
    ) -> None:
        key = f"/registry/secrets/default/{name}".encode()
        value = raw if sealed_by is None else sealed_by.seal(b'{"kind":"Secret"}', aad=key)
        assert self.store.txn([Put(key, value)]).succeeded


@pytest.fixture
def world() -> World:
    return World()


def test_counts_providers_key_ids_plaintext_and_staleness(world: World) -> None:
    for i in range(3):
        world.put(f"old-{i}", world.kms)
    world.keys.rotate(bytes(range(1, 33)), key_id=KEY_ID_2)
    for i in range(2):
        world.put(f"new-{i}", world.kms)
    world.put("cbc", world.cbc)
    world.put("plain", world.identity)

    cov = coverage_for(world.store, world.chain, "secrets")

    assert cov.total == 7
    assert cov.providers == {CBC_PREFIX: 1, KMS_PREFIX: 5, IDENTITY: 1}
    assert set(cov.key_ids) == {KEY_ID_1, KEY_ID_2}
    old, new = cov.key_ids[KEY_ID_1], cov.key_ids[KEY_ID_2]
    assert (old.count, old.provider, old.root_key, old.version, old.current) == (
        3,
        "kinko",
        ROOT,
        V1,
        False,
    )
    assert (new.count, new.version, new.current) == (2, V2, True)
    assert cov.plaintext == 1
    # Stale: the three under the old key_id, the aescbc one and the plaintext one.
    assert cov.stale == 5
    assert cov.undecryptable == 0
    assert cov.unavailable == 0
    assert cov.complete
    assert cov.first_provider == KMS_PREFIX
    assert cov.current_key_id == KEY_ID_2


def test_undecryptable_values_are_counted_and_named_up_to_the_sample(world: World) -> None:
    world.put("fine", world.kms)
    for i in range(SAMPLE + 3):
        world.put(f"lost-{i:02d}", world.kms)
    # The root key behind key_id 1 is destroyed; the new key_id writes from now on.
    world.keys.rotate(bytes(range(1, 33)), key_id=KEY_ID_2)
    world.keys.forget(KEY_ID_1)
    world.put("fine", world.kms)
    world.put("tampered", None, raw=CBC_PREFIX.encode() + b"\x00" * 32)
    world.put("foreign", None, raw=b"k8s:enc:secretbox:v1:other:xyz")

    cov = coverage_for(world.store, world.chain, "secrets")

    assert cov.total == SAMPLE + 6
    assert cov.undecryptable == SAMPLE + 5
    assert len(cov.undecryptable_names) == SAMPLE
    assert cov.undecryptable_names[0] == "default/foreign"
    assert "default/fine" not in cov.undecryptable_names
    assert cov.providers[UNKNOWN] == 1
    # An undecryptable value is not also stale: whether it would be is unknown.
    assert cov.stale == 0


def test_an_unavailable_plugin_makes_the_count_unknown_not_undecryptable(world: World) -> None:
    world.put("a", world.kms)
    world.put("b", world.kms)
    world.put("plain", world.identity)
    world.keys.unavailable = True

    report = coverage_report(world.store, _Source(world.chain), ["secrets", "configmaps"])

    cov = report.resources["secrets"]
    assert cov.unavailable == 2
    assert cov.undecryptable == 0
    assert cov.unavailable_reason is not None
    assert "unavailable" in cov.unavailable_reason
    assert not cov.complete
    assert len(report.notes) == 1
    assert "unknown" in report.notes[0]
    assert report.resources["configmaps"].total == 0


def test_json_form_is_what_the_api_serves(world: World) -> None:
    world.put("a", world.kms)
    report = coverage_report(world.store, _Source(world.chain), ["secrets"])

    doc = report.to_json({"secrets": {"state": "done", "done": 1}})

    json.dumps(doc)
    assert doc["configHash"] == "sha256:test"
    secrets = doc["resources"]["secrets"]  # type: ignore[index]
    assert secrets["total"] == 1
    assert secrets["providers"] == {KMS_PREFIX: 1}
    assert secrets["keyIds"][KEY_ID_1] == {
        "count": 1,
        "provider": "kinko",
        "rootKey": ROOT,
        "version": V1,
        "current": True,
    }
    assert secrets["migration"] == {"state": "done", "done": 1}
    for name in ("plaintext", "stale", "undecryptable", "undecryptableNames"):
        assert name in secrets


def test_other_plugins_key_ids_are_shown_raw(world: World) -> None:
    keys = Base64KmsV2Keys(bytes(range(32)), key_id="arn:aws:kms:eu-west-1:1:key/abc")
    other = KmsV2("aws", keys, rng=os.urandom)
    world.put("a", other)

    cov = coverage_for(world.store, ProviderChain([other]), "secrets")

    entry = cov.key_ids["arn:aws:kms:eu-west-1:1:key/abc"]
    assert (entry.root_key, entry.version, entry.provider, entry.current) == (
        None,
        None,
        "aws",
        True,
    )


def test_prefix_scan_finds_stale_values_without_decrypting(world: World) -> None:
    world.put("a", world.kms)
    world.put("plain", world.identity)
    world.put("cbc", world.cbc)
    world.keys.unavailable = True  # no plugin call may be made

    scan = prefix_scan(world.store, world.chain, "secrets")
    assert (scan.total, scan.stale) == (3, 2)
    assert scan.providers == {CBC_PREFIX: 1, KMS_PREFIX: 1, IDENTITY: 1}

    world.keys.unavailable = False
    world.keys.rotate(bytes(range(1, 33)), key_id=KEY_ID_2)
    assert prefix_scan(world.store, world.chain, "secrets").stale == 3

    plain_first = ProviderChain([world.identity, world.kms])
    assert prefix_scan(world.store, plain_first, "secrets").stale == 2


def test_bad_arguments_are_refused(world: World) -> None:
    with pytest.raises(InvalidArgument, match="resource"):
        coverage_for(world.store, world.chain, "a/b")
    with pytest.raises(InvalidArgument, match="page"):
        prefix_scan(world.store, world.chain, "secrets", page=0)


class _Source:
    def __init__(self, chain: ProviderChain) -> None:
        self._chain = chain

    @property
    def config_hash(self) -> str:
        return "sha256:test"

    def chain_for(self, resource: str) -> ProviderChain:
        return self._chain
