"""The stored JSON form of key service records: exact round trips, and typed errors for damage."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kinko.errors import CorruptMetadata
from kinko.keys import model
from kinko.keys import records as rec
from kinko.keys.model import (
    AliasEntry,
    InstancePolicies,
    KeyRing,
    KeyVersion,
    RotationPolicy,
    SealedMaterial,
)

T0 = datetime(2030, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)
CRN = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:one"


def _busy_key() -> model.Key:
    key = model.new_key(
        key_id="00000000-0000-4000-8000-000000000001",
        instance="inst-1",
        name="busy key",
        description="all the fields",
        extractable=False,
        version=KeyVersion("00000000-0000-4000-8000-00000000000a", T0, hsm_handle="ab" * 16),
        bit_length=256,
        now=T0,
        actor="alice",
        aliases=["one", "two"],
        key_ring_id="ring-a",
        expiration_date=T0 + timedelta(days=400),
        dual_auth_delete=True,
        rotation=RotationPolicy(enabled=True, interval_month=2),
    )
    later = T0 + timedelta(hours=2)
    key = model.rotate(
        key,
        now=later,
        actor="bob",
        version=KeyVersion("00000000-0000-4000-8000-00000000000b", later, hsm_handle="cd" * 16),
        payload_given=False,
    )
    key = model.register(key, now=later, actor="cos", crn=CRN, prevent_key_deletion=True)
    key = model.schedule_deletion(key, now=later, actor="alice")
    key = model.update_registration(
        key, now=later, actor="cos", crn=CRN, prevent_key_deletion=False
    )
    return model.delete(key, now=later, actor="bob", force=True)


def test_key_round_trip_is_exact() -> None:
    key = _busy_key()
    assert rec.load_key(rec.dump_key(key)) == key
    standard = model.new_key(
        key_id="00000000-0000-4000-8000-000000000002",
        instance="inst-1",
        name="std",
        extractable=True,
        version=KeyVersion(
            "00000000-0000-4000-8000-00000000000c",
            T0,
            sealed=SealedMaterial(b"\x01" * 12, b"\x02" * 48),
        ),
        bit_length=384,
        now=T0,
        actor="alice",
    )
    assert rec.load_key(rec.dump_key(standard)) == standard


def test_times_come_back_as_utc() -> None:
    offset = timezone(timedelta(hours=5))
    shifted = replace(_busy_key(), creation_date=T0.astimezone(offset))
    loaded = rec.load_key(rec.dump_key(shifted))
    assert loaded.creation_date == T0
    assert loaded.creation_date.tzinfo is UTC


def test_other_records_round_trip() -> None:
    alias = AliasEntry("one", "00000000-0000-4000-8000-000000000001", T0, "alice")
    assert rec.load_alias(rec.dump_alias(alias)) == alias
    rings = (KeyRing("ring-a", T0, "alice"), KeyRing("ring-b", T0, "bob"))
    assert rec.load_rings(rec.dump_rings(rings)) == rings
    policies = model.set_instance_policies(
        InstancePolicies(),
        now=T0,
        actor="alice",
        dual_auth_delete=True,
        rotation=RotationPolicy(enabled=True, interval_month=4),
    )
    assert rec.load_policies(rec.dump_policies(policies)) == policies
    token = model.new_import_token(
        instance="inst-1",
        now=T0,
        actor="alice",
        nonce=b"n" * 12,
        public_key_der=b"public",
        sealed_private_key=SealedMaterial(b"s" * 12, b"p" * 64),
        max_allowed_retrievals=3,
    )
    assert rec.load_import_token(rec.dump_import_token(token)) == token
    assert rec.load_kek_handle(rec.dump_kek_handle("ef" * 16)) == "ef" * 16


def _damaged(change: str) -> bytes:
    doc = json.loads(rec.dump_key(_busy_key()))
    if change == "schema":
        doc["v"] = 2
    elif change == "state":
        doc["state"] = 4
    elif change == "no versions":
        doc["versions"] = []
    elif change == "both materials":
        doc["versions"][0]["sealed"] = {"nonce": "AA==", "ciphertext": "AA=="}
    elif change == "naive time":
        doc["creationDate"] = "2030-01-01T00:00:00"
    elif change == "bad time":
        doc["creationDate"] = "yesterday"
    elif change == "missing field":
        del doc["name"]
    elif change == "wrong type":
        doc["extractable"] = "no"
    elif change == "aliases":
        doc["aliases"] = [1]
    elif change == "registration":
        doc["registrations"] = ["x"]
    elif change == "bad base64":
        doc["versions"][0]["hsmHandle"] = None
        doc["versions"][0]["sealed"] = {"nonce": "%%", "ciphertext": "AA=="}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "damage",
    [
        "schema",
        "state",
        "no versions",
        "both materials",
        "naive time",
        "bad time",
        "missing field",
        "wrong type",
        "aliases",
        "registration",
        "bad base64",
    ],
)
def test_damaged_key_records_are_corrupt_metadata(damage: str) -> None:
    with pytest.raises(CorruptMetadata) as info:
        rec.load_key(_damaged(damage))
    assert info.value.reason_code == "INCOMPLETE_METADATA_ERR"


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff\xfe", b'{"v": 1}', b"null"])
def test_garbage_is_corrupt_metadata(data: bytes) -> None:
    for load in (rec.load_key, rec.load_alias, rec.load_rings, rec.load_import_token):
        with pytest.raises(CorruptMetadata):
            load(data)


def test_paths_keep_instances_apart() -> None:
    assert rec.key_path("a", "k") == b"/kinko/keys/a/k"
    assert rec.keys_prefix("a") == b"/kinko/keys/a/"
    assert not rec.key_path("ab", "k").startswith(rec.keys_prefix("a"))
    assert rec.alias_path("a", "x").startswith(rec.aliases_prefix("a"))
