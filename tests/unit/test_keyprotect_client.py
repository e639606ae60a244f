"""KeyProtectClient against the real Key Protect app, in process.

The app is ``create_keyprotect_app`` over ``KeyService(MemoryStore, MemoryHsm)`` with a clock
the tests move; the client sends through FastAPI's ``TestClient`` (an ``httpx.Client``), so
every request crosses the real routes, middleware and error handlers. Covers every client
method, the wire shapes it sends (headers, media types, envelopes, a fresh correlation id),
and the error mapping back to kinko's classes, round trip from the server's error table.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import kinko
from kinko import errors
from kinko.api.keyprotect import create_keyprotect_app
from kinko.api.kp_http import kinko_error_response
from kinko.cli.errors import exit_code_for
from kinko.hsm.memory import MemoryHsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Principal, Role, TokenBook, issue_token
from kinko.keys.client import (
    REASON_ERRORS,
    KeyProtectClient,
    SecureImport,
    Unwrapped,
    Wrapped,
    error_from_response,
    seal_for_import,
)
from kinko.keys.model import KeyState, RotationPolicy
from kinko.keys.service import KeyService
from kinko.store.memory import MemoryStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)
INST, OTHER = "inst-1", "inst-2"
URL = "http://127.0.0.1:8443"
CRN = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:one"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class World:
    service: KeyService
    clock: Clock
    http: TestClient
    tokens: dict[str, str]
    requests: list[httpx.Request] = field(default_factory=list)

    def client(self, who: str = "alice", *, instance: str = INST) -> KeyProtectClient:
        return KeyProtectClient(URL, token=self.tokens[who], instance=instance, http=self.http)

    def ring_client(self, ring: str, who: str = "alice") -> KeyProtectClient:
        return KeyProtectClient(
            URL, token=self.tokens[who], instance=INST, key_ring=ring, http=self.http
        )


#: name → (instance, roles, service identity)
PEOPLE: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "alice": (INST, ("Manager",), False),
    "bob": (INST, ("Manager",), False),
    "rita": (INST, ("Reader",), False),
    "pat": (INST, ("KeyPurge",), False),
    "cos": (INST, ("Reader",), True),
    "eve": (OTHER, ("Manager",), False),
}


@pytest.fixture
def w() -> Iterator[World]:
    store, clock = MemoryStore(), Clock()
    service = KeyService(
        store,
        MemoryHsm(),
        audit=MemoryAuditSink(),
        clock=clock,
        rng=os.urandom,
        import_key_bits=2048,
    )
    book = TokenBook(store)
    tokens: dict[str, str] = {}
    for name, (instance, roles, svc) in PEOPLE.items():
        issued = issue_token(
            rng=os.urandom, instance=instance, roles=roles, now=T0, service=svc, name=name
        )
        book.add(issued.record)
        tokens[name] = issued.token
    with TestClient(create_keyprotect_app(service)) as http:
        world = World(service, clock, http, tokens)
        http.event_hooks = {"request": [world.requests.append], "response": []}
        yield world


def principal(name: str) -> Principal:
    instance, roles, svc = PEOPLE[name]
    return Principal(
        name=name, instance=instance, roles=frozenset(Role(r) for r in roles), service=svc
    )


def raised(exc_type: type[errors.KinkoError], fn: object) -> errors.KinkoError:
    assert callable(fn)
    with pytest.raises(exc_type) as info:
        fn()
    return info.value


# --- the wire: headers, media types, envelopes ---------------------------------------------


def test_create_sends_key_protect_headers_media_type_and_envelope(w: World) -> None:
    with w.client() as kp:
        key = kp.create_key("root-1", description="first", aliases=["r-one"])
    request = w.requests[-1]
    assert request.method == "POST"
    assert request.url.path == "/api/v2/keys"
    assert request.headers["authorization"] == f"Bearer {w.tokens['alice']}"
    assert request.headers["bluemix-instance"] == INST
    assert request.headers["content-type"] == "application/vnd.ibm.kms.key+json"
    assert request.headers["prefer"] == "return=representation"
    assert uuid.UUID(request.headers["correlation-id"]).version == 4
    assert "x-kms-key-ring" not in request.headers
    body = json.loads(request.content)
    assert body["metadata"] == {
        "collectionType": "application/vnd.ibm.kms.key+json",
        "collectionTotal": 1,
    }
    assert body["resources"] == [
        {
            "type": "application/vnd.ibm.kms.key+json",
            "name": "root-1",
            "extractable": False,
            "description": "first",
            "aliases": ["r-one"],
        }
    ]
    assert (key.name, key.description, key.aliases) == ("root-1", "first", ("r-one",))
    assert (key.state, key.extractable, key.imported, key.is_root) == (
        KeyState.ACTIVE,
        False,
        False,
        True,
    )
    assert key.key_ring_id == "default"
    assert key.crn.endswith(f":{INST}:key:{key.id}")
    assert key.key_version is not None
    assert key.creation_date == T0
    assert key.created_by == "alice"
    assert (key.algorithm_type, key.algorithm_bit_size) == ("AES", 256)
    assert key.dual_auth_delete is not None
    assert not key.dual_auth_delete.enabled


def test_every_call_has_a_fresh_correlation_id(w: World) -> None:
    with w.client() as kp:
        key = kp.create_key("kk")
        kp.get_key_metadata(key.id)
        kp.get_key_metadata(key.id)
    ids = [r.headers["correlation-id"] for r in w.requests]
    assert len(ids) == 3
    assert len(set(ids)) == 3


def test_key_ring_header_goes_on_key_calls_only(w: World) -> None:
    w.client().create_key_ring("ring-a")
    with w.ring_client("ring-a") as kp:
        key = kp.create_key("in-ring")
        assert key.key_ring_id == "ring-a"
        assert w.requests[-1].headers["x-kms-key-ring"] == "ring-a"
        kp.list_key_rings()
        assert "x-kms-key-ring" not in w.requests[-1].headers
        assert [k.id for k in kp.list_keys().keys] == [key.id]


def test_action_media_types_follow_the_sdk(w: World) -> None:
    kp = w.client()
    key = kp.create_key("kk")
    wrapped = kp.wrap(key.id, b"\x01" * 32, aad=["a"])
    assert w.requests[-1].headers["content-type"] == (
        "application/vnd.ibm.kms.key_action_wrap+json"
    )
    assert json.loads(w.requests[-1].content) == {
        "plaintext": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "aad": ["a"],
    }
    kp.unwrap(key.id, wrapped.ciphertext, aad=["a"])
    assert w.requests[-1].headers["content-type"].endswith("key_action_unwrap+json")
    kp.disable(key.id)
    assert w.requests[-1].url.path == f"/api/v2/keys/{key.id}/actions/disable"
    assert not w.requests[-1].content


def test_bearer_prefix_and_blank_space_are_stripped(w: World) -> None:
    kp = KeyProtectClient(
        URL, token=f"Bearer {w.tokens['alice']} ", instance=f" {INST}", http=w.http
    )
    kp.create_key("kk")
    assert w.requests[-1].headers["authorization"] == f"Bearer {w.tokens['alice']}"
    assert w.requests[-1].headers["bluemix-instance"] == INST


def test_path_segments_are_percent_encoded(w: World) -> None:
    kp = w.client()
    raised(errors.NotFound, lambda: kp.get_key_metadata("a/b"))
    assert w.requests[-1].url.raw_path.startswith(b"/api/v2/keys/a%2Fb/metadata")


# --- keys: create, import, read, list --------------------------------------------------------


def test_standard_key_payload_only_from_get_key(w: World) -> None:
    kp = w.client()
    key = kp.create_key("std", extractable=True, payload=b"secret material")
    assert key.extractable
    assert key.imported
    assert key.payload is None
    assert kp.get_key(key.id).payload == b"secret material"
    assert kp.get_key_metadata(key.id).payload is None
    assert "secret material" not in repr(kp.get_key(key.id))


def test_generated_standard_key_has_32_bytes(w: World) -> None:
    kp = w.client()
    key = kp.create_key("std", extractable=True)
    payload = kp.get_key(key.id).payload
    assert payload is not None
    assert len(payload) == 32


def test_create_with_policy_overrides(w: World) -> None:
    kp = w.client()
    key = kp.create_key("pp", rotation=RotationPolicy(True, 3), dual_auth=True)
    assert w.requests[-1].url.path == "/api/v2/keys_with_policy_overrides"
    assert key.rotation == RotationPolicy(enabled=True, interval_month=3)
    assert key.dual_auth_delete is not None
    assert key.dual_auth_delete.enabled


def test_create_with_expiration(w: World) -> None:
    expires = T0 + timedelta(days=30)
    key = w.client().create_key("exp", expiration=expires)
    assert key.expiration_date == expires
    body = json.loads(w.requests[-1].content)
    assert body["resources"][0]["expirationDate"] == "2030-01-31T00:00:00Z"


def test_create_refuses_naive_expiration_and_both_payload_kinds(w: World) -> None:
    kp = w.client()
    raised(errors.InvalidArgument, lambda: kp.create_key("xx", expiration=datetime(2030, 1, 1)))
    secure = SecureImport(b"p", b"n", b"\x00" * 12, "RSAES_OAEP_SHA_256")
    raised(errors.InvalidArgument, lambda: kp.create_key("xx", payload=b"1" * 32, secure=secure))
    raised(errors.InvalidArgument, lambda: kp.create_key("xx", aliases="one"))
    assert w.requests == []


def test_plain_root_import(w: World) -> None:
    kp = w.client()
    key = kp.create_key("imported", payload=os.urandom(32))
    assert (key.imported, key.extractable) == (True, False)
    wrapped = kp.wrap(key.id, b"dek")
    assert kp.unwrap(key.id, wrapped.ciphertext).plaintext == b"dek"


def test_bad_root_material_is_invalid_argument(w: World) -> None:
    exc = raised(errors.InvalidArgument, lambda: w.client().create_key("xx", payload=b"short"))
    assert exc.reason_code == "BAD_BODY_ERR"
    assert exit_code_for(exc) == 4


def test_list_filters_and_pages(w: World) -> None:
    kp = w.client()
    roots = []
    for i in range(3):
        roots.append(kp.create_key(f"root-{i}"))
        w.clock.advance(seconds=1)  # Keys list oldest first (ties broken by id).
    std = kp.create_key("std", extractable=True)
    kp.disable(roots[1].id)
    listed = kp.list_keys()
    assert [k.id for k in listed.keys] == [*(r.id for r in roots), std.id]
    assert listed.total is None
    assert [k.id for k in kp.list_keys(extractable=True).keys] == [std.id]
    assert [k.id for k in kp.list_keys(extractable=False).keys] == [r.id for r in roots]
    assert [k.id for k in kp.list_keys(states=[KeyState.SUSPENDED]).keys] == [roots[1].id]
    assert [k.id for k in kp.list_keys(limit=2, offset=1).keys] == [roots[1].id, roots[2].id]
    assert [k.id for k in kp.iter_keys(page_size=3)] == [k.id for k in listed.keys]
    assert kp.count_keys() == 4
    assert kp.count_keys(states=[2]) == 1
    assert w.requests[-1].method == "HEAD"


def test_list_shows_destroyed_keys_only_when_asked(w: World) -> None:
    kp = w.client()
    key = kp.create_key("kk")
    kp.delete(key.id)
    assert kp.list_keys().keys == ()
    destroyed = kp.list_keys(states=[5]).keys
    assert [(k.id, k.state, k.deleted) for k in destroyed] == [(key.id, KeyState.DESTROYED, True)]


def test_get_by_alias(w: World) -> None:
    kp = w.client()
    key = kp.create_key("kk", aliases=["my-alias"])
    assert kp.get_key_metadata("my-alias").id == key.id


# --- versions, wrap, unwrap, rewrap, rotate ---------------------------------------------------


def test_wrap_unwrap_rewrap_across_a_rotation(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    first = kp.wrap(key.id, b"d" * 32, aad=["ns", "secret"])
    assert first.plaintext is None
    assert key.key_version is not None
    assert first.key_version == key.key_version.id
    same = kp.unwrap(key.id, first.ciphertext, aad=["ns", "secret"])
    assert (same.plaintext, same.key_version, same.ciphertext) == (
        b"d" * 32,
        first.key_version,
        None,
    )
    assert kp.rotate(key.id) is None
    rotated = kp.get_key_metadata(key.id)
    assert rotated.key_version is not None
    assert rotated.key_version.id != first.key_version
    assert rotated.last_rotate_date == T0
    versions = kp.versions(key.id)
    assert [v.id for v in versions.versions] == [rotated.key_version.id, first.key_version]
    assert versions.total == 2
    old = kp.unwrap(key.id, first.ciphertext, aad=["ns", "secret"])
    assert old.plaintext == b"d" * 32
    assert old.key_version == first.key_version
    assert old.rewrapped_key_version == rotated.key_version.id
    assert old.ciphertext is not None
    assert kp.unwrap(key.id, old.ciphertext, aad=["ns", "secret"]).ciphertext is None
    again = kp.rewrap(key.id, first.ciphertext, aad=["ns", "secret"])
    assert (again.key_version, again.rewrapped_key_version) == (
        first.key_version,
        rotated.key_version.id,
    )
    assert kp.unwrap(key.id, again.ciphertext, aad=["ns", "secret"]).plaintext == b"d" * 32


def test_wrap_without_plaintext_returns_a_generated_dek(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    wrapped = kp.wrap(key.id)
    assert wrapped.plaintext is not None
    assert len(wrapped.plaintext) == 32
    assert kp.unwrap(key.id, wrapped.ciphertext).plaintext == wrapped.plaintext


def test_results_never_show_material_in_repr(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    wrapped = kp.wrap(key.id, b"TOP-SECRET-DEK")
    unwrapped = kp.unwrap(key.id, wrapped.ciphertext)
    for value in (wrapped, unwrapped, Wrapped("c" * 40, "v", b"p"), Unwrapped(b"p", "v", "c")):
        text = repr(value)
        assert "TOP-SECRET" not in text
        assert wrapped.ciphertext not in text
    assert w.tokens["alice"] not in repr(kp)


def test_wrong_aad_or_tampered_ciphertext_is_unprocessable(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    other = kp.create_key("other")
    wrapped = kp.wrap(key.id, b"dek", aad=["a"])
    for fn in (
        lambda: kp.unwrap(key.id, wrapped.ciphertext, aad=["b"]),
        lambda: kp.unwrap(other.id, wrapped.ciphertext, aad=["a"]),
        lambda: kp.rewrap(key.id, wrapped.ciphertext),
    ):
        exc = raised(errors.UnprocessableCiphertext, fn)
        assert exc.reason_code == "UNPROCESSABLE_CIPHERTEXT_ERR"
        assert exit_code_for(exc) == 5
    raised(errors.InvalidArgument, lambda: kp.unwrap(key.id, "not base64!"))
    raised(errors.InvalidArgument, lambda: kp.unwrap(key.id, wrapped.ciphertext, aad="a"))


def test_standard_key_cannot_wrap(w: World) -> None:
    kp = w.client()
    std = kp.create_key("std", extractable=True)
    exc = raised(errors.NotAllowed, lambda: kp.wrap(std.id, b"x"))
    assert exc.reason_code == "KEY_ROOT_REQ_ERR"


def test_second_rotation_within_an_hour_is_too_early(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    kp.rotate(key.id)
    exc = raised(errors.TooEarly, lambda: kp.rotate(key.id))
    assert exc.reason_code == "KEY_ROTATION_NOT_PERMITTED"
    assert exit_code_for(exc) == 7
    w.clock.advance(hours=1)
    kp.rotate(key.id)
    assert kp.versions(key.id).total == 3


def test_imported_key_rotates_with_new_material_only(w: World) -> None:
    kp = w.client()
    key = kp.create_key("imported", payload=os.urandom(32))
    exc = raised(errors.NotAllowed, lambda: kp.rotate(key.id))
    assert exc.reason_code == "KEY_PAYLOAD_REQ_ERR"
    kp.rotate(key.id, os.urandom(32))
    assert kp.versions(key.id).total == 2


# --- state actions, delete, restore, purge ----------------------------------------------------


def test_disable_enable_and_the_30_second_rule(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    kp.disable(key.id)
    assert kp.get_key_metadata(key.id).state is KeyState.SUSPENDED
    exc = raised(errors.WrongState, lambda: kp.wrap(key.id, b"x"))
    assert exc.reason_code == "KEY_ACTION_INVALID_STATE_ERR"
    assert exit_code_for(exc) == 7
    raised(errors.WrongState, lambda: kp.disable(key.id))
    exc = raised(errors.TooEarly, lambda: kp.enable(key.id))
    assert exc.reason_code == "REQ_TOO_EARLY_ERR"
    w.clock.advance(seconds=30)
    kp.enable(key.id)
    assert kp.get_key_metadata(key.id).state is KeyState.ACTIVE


def test_registration_blocks_delete_until_forced(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    w.service.create_registration(principal("cos"), INST, key.id, CRN, description="bucket")
    exc = raised(errors.DeletionRefused, lambda: kp.delete(key.id))
    assert exc.reason_code == "PROTECTED_RESOURCE_ERR"
    assert "HTTP 409 PROTECTED_RESOURCE_ERR" in str(exc)
    assert exit_code_for(exc) == exit_code_for(errors.DeletionRefused("local"))
    regs = kp.list_registrations(key.id)
    assert regs.total == 1
    reg = regs.registrations[0]
    assert (reg.key_id, reg.resource_crn, reg.description, reg.prevent_key_deletion) == (
        key.id,
        CRN,
        "bucket",
        False,
    )
    assert key.key_version is not None
    assert reg.key_version_id == key.key_version.id
    assert [r.resource_crn for r in kp.list_registrations().registrations] == [CRN]
    assert kp.list_registrations(crn_query="crn:*:bucket:*").total == 1
    assert kp.list_registrations(crn_query="crn:*:nothing").total == 0
    assert w.requests[-1].url.params["urlEncodedResourceCRNQuery"] == "crn:*:nothing"
    deleted = kp.delete(key.id, force=True)
    assert deleted is not None
    assert deleted.state is KeyState.DESTROYED
    assert w.requests[-1].url.params["force"] == "true"


def test_delete_restore_purge(w: World) -> None:
    kp, purger = w.client(), w.client("pat")
    key = kp.create_key("root")
    wrapped = kp.wrap(key.id, b"dek")
    deleted = kp.delete(key.id)
    assert deleted is not None
    assert (deleted.state, deleted.deleted, deleted.deleted_by) == (
        KeyState.DESTROYED,
        True,
        "alice",
    )
    assert deleted.deletion_date == T0
    assert deleted.purge_allowed_from == T0 + timedelta(hours=4)
    assert deleted.restore_expiration_date == T0 + timedelta(days=30)
    exc = raised(errors.Gone, lambda: kp.delete(key.id))
    assert exc.reason_code == "KEY_DELETED_ERR"
    assert exit_code_for(exc) == 14
    raised(errors.Gone, lambda: kp.wrap(key.id, b"x"))
    raised(errors.TooEarly, lambda: kp.restore(key.id))
    w.clock.advance(seconds=30)
    restored = kp.restore(key.id)
    assert restored is not None
    assert restored.state is KeyState.ACTIVE
    assert kp.unwrap(key.id, wrapped.ciphertext).plaintext == b"dek"
    kp.delete(key.id)
    raised(errors.Forbidden, lambda: kp.purge(key.id))
    exc = raised(errors.TooEarly, lambda: purger.purge(key.id))
    w.clock.advance(hours=4)
    purged = purger.purge(key.id)
    assert purged is not None
    assert purged.id == key.id
    exc = raised(errors.NotFound, lambda: kp.get_key_metadata(key.id))
    assert exc.reason_code == "KEY_NOT_FOUND_ERR"


def test_dual_authorization_needs_two_people(w: World) -> None:
    alice, bob = w.client("alice"), w.client("bob")
    key = alice.create_key("guarded", dual_auth=True)
    exc = raised(errors.DeletionRefused, lambda: alice.delete(key.id))
    assert exc.reason_code == "AUTHORIZATIONS_NOT_MET"
    alice.set_for_deletion(key.id)
    status = alice.get_key_metadata(key.id).dual_auth_delete
    assert status is not None
    assert status.key_set_for_deletion
    assert status.auth_expiration == T0 + timedelta(days=7)
    raised(errors.DeletionRefused, lambda: alice.delete(key.id))
    alice.unset_for_deletion(key.id)
    raised(errors.DeletionRefused, lambda: bob.delete(key.id))
    alice.set_for_deletion(key.id)
    deleted = bob.delete(key.id)
    assert deleted is not None
    assert deleted.state is KeyState.DESTROYED
    plain = alice.create_key("plain")
    exc = raised(errors.DeletionRefused, lambda: alice.set_for_deletion(plain.id))
    assert exc.reason_code == "NOT_DUAL_AUTH_ERR"


def test_sync_is_accepted(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    kp.sync(key.id)
    assert w.requests[-1].url.path.endswith("/actions/sync")


# --- policies ---------------------------------------------------------------------------------


def test_key_policies(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    empty = kp.get_policies(key.id)
    assert (empty.rotation, empty.dual_auth_delete) == (None, None)
    set_one = kp.put_policies(key.id, rotation=RotationPolicy(True, 2))
    assert w.requests[-1].url.params["policy"] == "rotation"
    assert set_one.rotation is not None
    assert (set_one.rotation.enabled, set_one.rotation.interval_month) == (True, 2)
    assert set_one.rotation.stamp is not None
    assert set_one.rotation.stamp.created_by == "alice"
    both = kp.put_policies(key.id, rotation=RotationPolicy(False), dual_auth_delete=True)
    assert "policy" not in w.requests[-1].url.params
    body = json.loads(w.requests[-1].content)
    assert body["metadata"]["collectionTotal"] == 2
    got = kp.get_policies(key.id)
    assert got == both
    assert got.key_id == key.id
    assert got.crn == key.crn
    assert got.rotation is not None
    assert not got.rotation.enabled
    assert got.dual_auth_delete is not None
    assert got.dual_auth_delete.enabled
    raised(errors.InvalidArgument, lambda: kp.put_policies(key.id))
    exc = raised(
        errors.InvalidArgument, lambda: kp.put_policies(key.id, rotation=RotationPolicy(True, 13))
    )
    assert exit_code_for(exc) == 4


def test_instance_policies(w: World) -> None:
    kp = w.client()
    before = kp.get_instance_policies()
    assert (before.dual_auth_delete, before.rotation) == (False, None)
    kp.put_instance_policies(dual_auth_delete=True)
    assert w.requests[-1].url.params["policy"] == "dualAuthDelete"
    kp.put_instance_policies(rotation=RotationPolicy(True, 6))
    after = kp.get_instance_policies()
    assert after.dual_auth_delete
    assert after.dual_auth_stamp is not None
    assert after.rotation is not None
    assert (after.rotation.enabled, after.rotation.interval_month) == (True, 6)
    inherited = kp.create_key("new")
    assert inherited.dual_auth_delete is not None
    assert inherited.dual_auth_delete.enabled
    raised(errors.InvalidArgument, lambda: kp.put_instance_policies())
    raised(errors.Forbidden, lambda: w.client("rita").put_instance_policies(dual_auth_delete=True))


# --- import tokens, secure import ------------------------------------------------------------


def test_secure_import_through_the_import_token(w: World) -> None:
    kp = w.client()
    info = kp.create_import_token(expiration=900, max_allowed_retrievals=2)
    assert info.expiration_date == T0 + timedelta(seconds=900)
    assert (info.max_allowed_retrievals, info.remaining_retrievals) == (2, 2)
    token = kp.get_import_token()
    assert token.public_key_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert len(token.nonce) == 12
    assert token.info.remaining_retrievals == 1
    material = os.urandom(32)
    key = kp.create_key("byok", secure=seal_for_import(token, material))
    assert (key.imported, key.extractable) == (True, False)
    body = json.loads(w.requests[-1].content)["resources"][0]
    assert body["encryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
    assert set(body) >= {"payload", "encryptedNonce", "iv"}
    assert kp.unwrap(key.id, kp.wrap(key.id, b"dek").ciphertext).plaintext == b"dek"
    # The same material again, sealed with SHA-1 OAEP: accepted as well.
    sha1 = seal_for_import(token, material, algorithm="RSAES_OAEP_SHA_1")
    assert kp.create_key("byok-sha1", secure=sha1).imported
    # Rotation of a securely imported key: new material through the token.
    kp.rotate(key.id, secure=seal_for_import(kp.get_import_token(), os.urandom(32)))
    assert kp.versions(key.id).total == 2
    exc = raised(errors.Conflict, kp.get_import_token)
    assert exc.reason_code == "IMPORT_TOKEN_EXPIRED_ERR"


def test_secure_import_with_a_wrong_nonce_is_refused(w: World) -> None:
    kp = w.client()
    kp.create_import_token()
    token = kp.get_import_token()
    forged = type(token)(info=token.info, public_key_pem=token.public_key_pem, nonce=b"\0" * 12)
    exc = raised(
        errors.NotAllowed, lambda: kp.create_key("xx", secure=seal_for_import(forged, b"k" * 32))
    )
    assert exc.reason_code == "INCORRECT_NONCE_ERR"


def test_import_token_missing_is_not_found(w: World) -> None:
    raised(errors.NotFound, w.client().get_import_token)


def test_seal_for_import_checks_its_inputs(w: World) -> None:
    kp = w.client()
    kp.create_import_token()
    token = kp.get_import_token()
    raised(errors.InvalidArgument, lambda: seal_for_import(token, b"short"))
    raised(errors.InvalidArgument, lambda: seal_for_import(token, b"k" * 32, algorithm="RSA"))
    raised(errors.InvalidArgument, lambda: seal_for_import(token, b"k" * 32, iv=b"123"))
    sealed = seal_for_import(token, b"k" * 32, iv=b"\1" * 12)
    assert sealed.iv == b"\1" * 12
    assert b"k" * 32 not in repr(sealed).encode()


# --- aliases, key rings --------------------------------------------------------------------------


def test_aliases(w: World) -> None:
    kp = w.client()
    key = kp.create_key("root")
    other = kp.create_key("other")
    entry = kp.create_alias(key.id, "nice-name")
    assert (entry.alias, entry.key_id, entry.created_by, entry.creation_date) == (
        "nice-name",
        key.id,
        "alice",
        T0,
    )
    assert kp.get_key_metadata("nice-name").aliases == ("nice-name",)
    exc = raised(errors.Conflict, lambda: kp.create_alias(other.id, "nice-name"))
    assert exc.reason_code == "KEY_ALIAS_NOT_UNIQUE_ERR"
    kp.delete_alias(key.id, "nice-name")
    raised(errors.NotFound, lambda: kp.get_key_metadata("nice-name"))


def test_key_rings(w: World) -> None:
    kp = w.client()
    kp.create_key_ring("ring-a")
    assert w.requests[-1].url.path == "/api/v2/key_rings/ring-a"
    rings = kp.list_key_rings()
    assert [r.id for r in rings.key_rings] == ["default", "ring-a"]
    assert rings.total == 2
    assert rings.key_rings[1].created_by == "alice"
    raised(errors.Conflict, lambda: kp.create_key_ring("ring-a"))
    key = kp.create_key("root", key_ring="ring-a")
    assert key.key_ring_id == "ring-a"
    exc = raised(errors.Conflict, lambda: kp.delete_key_ring("ring-a"))
    assert exc.reason_code == "KEY_RING_NOT_EMPTY_ERR"
    moved = kp.move_key(key.id, "default")
    assert moved.key_ring_id == "default"
    assert w.requests[-1].method == "PATCH"
    kp.delete_key_ring("ring-a")
    exc = raised(errors.NotFound, lambda: kp.move_key(key.id, "ring-a"))
    assert exc.reason_code == "KEY_RING_NOT_FOUND_ERR"
    raised(errors.NotFound, lambda: kp.delete_key_ring("ring-a"))


# --- authentication, tenants, roles ------------------------------------------------------------


def test_bad_token_is_unauthorized(w: World) -> None:
    kp = KeyProtectClient(URL, token="kinko_" + "A" * 43, instance=INST, http=w.http)
    exc = raised(errors.Unauthorized, kp.list_keys)
    assert exc.reason_code == "UNAUTHORIZED_ERR"
    assert exit_code_for(exc) == 8
    assert "kinko_" not in str(exc)


def test_token_of_another_instance_is_unauthorized(w: World) -> None:
    exc = raised(errors.Unauthorized, w.client("eve", instance=INST).list_keys)
    assert exc.reason_code == "UNAUTHORIZED_ERR"


def test_another_instances_key_is_not_found(w: World) -> None:
    theirs = w.service.create_key(principal("eve"), OTHER, name="theirs")
    exc = raised(errors.NotFound, lambda: w.client().get_key_metadata(theirs.id))
    assert exc.reason_code == "KEY_NOT_FOUND_ERR"
    assert exit_code_for(exc) == 6
    assert w.client("eve", instance=OTHER).get_key_metadata(theirs.id).name == "theirs"


def test_reader_role_limits(w: World) -> None:
    key = w.client().create_key("std", extractable=True)
    reader = w.client("rita")
    assert reader.get_key_metadata(key.id).id == key.id
    exc = raised(errors.Forbidden, lambda: reader.get_key(key.id))
    assert exc.reason_code == "FORBIDDEN_ERR"
    assert exit_code_for(exc) == 9
    raised(errors.Forbidden, lambda: reader.create_key("nope"))


# --- the error table, unit by unit -----------------------------------------------------------


def _mock(handler: httpx.MockTransport) -> KeyProtectClient:
    return KeyProtectClient(
        URL, token="t0ken-SECRET", instance=INST, http=httpx.Client(transport=handler)
    )


def _envelope(status: int, code: str, message: str) -> httpx.Response:
    body = {
        "metadata": {"collectionType": "application/vnd.ibm.kms.error+json", "collectionTotal": 1},
        "resources": [
            {
                "errorMsg": "Conflict: Key could not be deleted",
                "reasons": [{"code": code, "message": message, "status": status}],
            }
        ],
    }
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(("code", "cls"), sorted(REASON_ERRORS.items()))
def test_every_reason_code_maps_to_its_class(code: str, cls: type[errors.KinkoError]) -> None:
    status = 503 if issubclass(cls, errors.UnavailableError) else 409
    kp = _mock(httpx.MockTransport(lambda request: _envelope(status, code, "refused")))
    with pytest.raises(errors.KinkoError) as info:
        kp.list_keys()
    assert type(info.value) is cls
    assert info.value.reason_code == code
    assert exit_code_for(info.value) == exit_code_for(
        errors.UnprocessableCiphertext() if cls is errors.UnprocessableCiphertext else cls("x")
    )


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidArgument),
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (405, errors.CallerError),
        (409, errors.Conflict),
        (410, errors.Gone),
        (413, errors.InvalidArgument),
        (422, errors.Unprocessable),
        (429, errors.KeyServiceUnavailable),
        (500, errors.KeyServiceUnavailable),
        (502, errors.KeyServiceUnavailable),
        (503, errors.KeyServiceUnavailable),
        (302, errors.KeyServiceUnavailable),
    ],
)
def test_unknown_codes_fall_back_to_the_status(status: int, cls: type[errors.KinkoError]) -> None:
    for response in (_envelope(status, "SOME_NEW_ERR", "new"), httpx.Response(status, text="<h")):
        kp = _mock(httpx.MockTransport(lambda request, r=response: r))
        with pytest.raises(errors.KinkoError) as info:
            kp.list_keys()
        assert type(info.value) is cls


def test_error_message_is_the_services_cleaned_and_capped() -> None:
    response = _envelope(409, "PROTECTED_RESOURCE_ERR", "keep \x1b[31mout" + "x" * 1000)
    response.headers["correlation-id"] = "abc-123"
    exc = error_from_response(response)
    text = str(exc)
    assert "\x1b" not in text
    assert text.startswith("keep  [31mout")
    assert len(text) < 400
    assert "(HTTP 409 PROTECTED_RESOURCE_ERR, correlation-id abc-123)" in text


def test_unprocessable_ciphertext_stays_opaque() -> None:
    exc = error_from_response(_envelope(422, "UNPROCESSABLE_CIPHERTEXT_ERR", "anything at all"))
    assert isinstance(exc, errors.UnprocessableCiphertext)
    assert "anything" not in str(exc)
    malformed = error_from_response(
        _envelope(422, "UNPROCESSABLE_CIPHERTEXT_ERR", errors.UnprocessableCiphertext.MALFORMED)
    )
    assert isinstance(malformed, errors.UnprocessableCiphertext)
    assert malformed.reason == errors.UnprocessableCiphertext.MALFORMED


#: Errors the server raises, as instances (class default codes and the specific ones).
SERVER_ERRORS: list[errors.KinkoError] = [
    errors.InvalidArgument("x"),
    errors.InvalidArgument("x", reason_code="COLLECTION_TOTAL_MISMATCH_ERR"),
    errors.InvalidArgument("x", reason_code="NUM_COLLECTION_RESOURCE_ERR"),
    errors.InvalidArgument("x", reason_code="KEY_ALIAS_QUOTA_ERR"),
    errors.NotAllowed("x", reason_code="KEY_ROOT_REQ_ERR"),
    errors.NotAllowed("x", reason_code="KEY_EXPIRED_ERR"),
    errors.NotAllowed("x", reason_code="INCORRECT_NONCE_IV_ERR"),
    errors.Unauthorized("x"),
    errors.Forbidden("x"),
    errors.Forbidden("x", reason_code="SERVICE_ONLY_ERR"),
    errors.Forbidden("x", reason_code="FEATURE_RESTRICTED_ERR"),
    errors.DecryptionError(),
    errors.UnprocessableCiphertext(),
    errors.NotFound("x"),
    errors.NotFound("x", reason_code="KEY_NOT_FOUND_ERR"),
    errors.NotFound("x", reason_code="KEY_RING_NOT_FOUND_ERR"),
    errors.Gone("x"),
    errors.Unprocessable("x"),
    errors.Unprocessable("x", reason_code="KEY_VERSION_INVALID"),
    errors.Unprocessable("x", reason_code="KEY_ROOT_REQ_REG_ERR"),
    errors.Conflict("x"),
    errors.Conflict("x", reason_code="KEY_ALIAS_NOT_UNIQUE_ERR"),
    errors.Conflict("x", reason_code="IMPORT_TOKEN_EXPIRED_ERR"),
    errors.Conflict("x", reason_code="KEY_RING_NOT_EMPTY_ERR"),
    errors.WrongState("x"),
    errors.TooEarly("x"),
    errors.TooEarly("x", reason_code="KEY_ROTATION_NOT_PERMITTED"),
    errors.DeletionRefused("x"),
    errors.DeletionRefused("x", reason_code="PREV_KEY_DEL_ERR"),
    errors.DeletionRefused("x", reason_code="AUTHORIZATIONS_NOT_MET"),
    errors.DeletionRefused("x", reason_code="NOT_DUAL_AUTH_ERR"),
    errors.CorruptMetadata("x"),
]


@pytest.mark.parametrize("exc", SERVER_ERRORS, ids=lambda e: f"{type(e).__name__}-{e.reason_code}")
def test_server_error_round_trips_to_the_same_exit_code(exc: errors.KinkoError) -> None:
    served = kinko_error_response(None, exc)
    response = httpx.Response(
        served.status_code, content=bytes(served.body), headers=dict(served.headers)
    )
    back = error_from_response(response)
    assert back.reason_code == exc.reason_code
    assert exit_code_for(back) == exit_code_for(exc)
    assert isinstance(back, type(exc)) or isinstance(exc, type(back))


@pytest.mark.parametrize(
    "exc",
    [errors.HsmUnavailable("x"), errors.StoreUnavailable("x"), errors.UnavailableError("x")],
)
def test_server_outages_become_key_service_unavailable(exc: errors.KinkoError) -> None:
    served = kinko_error_response(None, exc)
    response = httpx.Response(served.status_code, content=bytes(served.body))
    back = error_from_response(response)
    assert type(back) is errors.KeyServiceUnavailable
    assert exit_code_for(back) == 16


def test_every_reason_code_the_service_uses_is_in_the_table() -> None:
    root = Path(kinko.__file__).parent
    codes: set[str] = set()
    for path in root.rglob("*.py"):
        if path.name == "client.py" and path.parent.name == "keys":
            continue
        codes |= set(re.findall(r'reason_code ?= ?"([A-Z_]+)"', path.read_text()))
    assert codes
    assert codes <= set(REASON_ERRORS)


# --- transport failures and malformed answers ----------------------------------------------------


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kp = KeyProtectClient(f"http://127.0.0.1:{port}", token="t0ken-SECRET", instance=INST)
    with kp:
        exc = raised(errors.KeyServiceUnavailable, kp.list_keys)
    assert f"127.0.0.1:{port}" in str(exc)
    assert "t0ken-SECRET" not in str(exc)
    assert exit_code_for(exc) == 16


def test_timeout_is_unavailable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    exc = raised(errors.KeyServiceUnavailable, _mock(httpx.MockTransport(slow)).list_keys)
    assert "did not answer in time" in str(exc)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"resources": "nope"}),
        httpx.Response(200, json={"resources": [{"id": "x", "name": "n", "state": 9}]}),
        httpx.Response(200, json={"resources": [{"id": "x", "name": 5, "state": 1}]}),
        httpx.Response(
            200, json={"resources": [{"id": "x", "name": "n", "state": 1, "creationDate": "y"}]}
        ),
        httpx.Response(200, json={"resources": []}),
    ],
)
def test_malformed_answers_are_unavailable(answer: httpx.Response) -> None:
    kp = _mock(httpx.MockTransport(lambda request: answer))
    exc = raised(errors.KeyServiceUnavailable, lambda: kp.get_key_metadata("x"))
    assert "not Key Protect's API" in str(exc)


def test_malformed_wrap_answer_is_unavailable() -> None:
    answer = httpx.Response(200, json={"ciphertext": "abc"})
    kp = _mock(httpx.MockTransport(lambda request: answer))
    exc = raised(errors.KeyServiceUnavailable, lambda: kp.wrap("k", b"x"))
    assert "keyVersion" in str(exc)


def test_minimal_create_answer_is_read_in_full() -> None:
    full = {
        "metadata": {"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
        "resources": [{"id": "k1", "name": "full", "state": 1, "extractable": False}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json={"resources": [{"type": "x", "id": "k1"}]})
        assert request.url.path == "/api/v2/keys/k1/metadata"
        return httpx.Response(200, json=full)

    key = _mock(httpx.MockTransport(handler)).create_key("full")
    assert (key.id, key.name) == ("k1", "full")


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://example.com", "ftp://127.0.0.1", "127.0.0.1:8443", "https://", "https://h/?a=1"],
)
def test_bad_urls_are_refused(url: str) -> None:
    raised(errors.InvalidArgument, lambda: KeyProtectClient(url, token="t", instance=INST))


@pytest.mark.parametrize("url", ["http://localhost:1", "http://[::1]:1", "https://example.com/"])
def test_good_urls_are_accepted(url: str) -> None:
    with KeyProtectClient(url, token="t", instance=INST) as kp:
        assert kp.url == url.rstrip("/")
        assert kp.instance == INST


def test_empty_token_instance_or_timeout_are_refused(tmp_path: Path) -> None:
    raised(errors.InvalidArgument, lambda: KeyProtectClient(URL, token=" ", instance=INST))
    raised(errors.InvalidArgument, lambda: KeyProtectClient(URL, token="t", instance=""))
    raised(
        errors.InvalidArgument, lambda: KeyProtectClient(URL, token="t", instance="i", timeout=0)
    )
    missing = tmp_path / "none.crt"
    raised(
        errors.InvalidArgument, lambda: KeyProtectClient(URL, token="t", instance="i", ca=missing)
    )


def test_injected_http_client_is_not_closed(w: World) -> None:
    with w.client() as kp:
        kp.list_keys()
    assert not w.http.is_closed


@pytest.mark.parametrize(
    ("token", "instance", "ring"),
    [
        ("kinko_secret\r\nX-Evil: 1", INST, None),
        ("kinko_sécret", INST, None),
        ("kinko_secret", "inst 1", None),
        ("kinko_secret", INST, "ring\n"),
    ],
)
def test_header_values_that_cannot_travel_are_refused(
    token: str, instance: str, ring: str | None
) -> None:
    exc = raised(
        errors.InvalidArgument,
        lambda: KeyProtectClient(URL, token=token, instance=instance, key_ring=ring),
    )
    assert "secret" not in str(exc)
    assert "sécret" not in str(exc)
