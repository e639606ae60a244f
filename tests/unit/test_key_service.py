"""KeyService over MemoryStore and MemoryHsm with a fake clock: every operation, end to end.

Covers wrap/unwrap/rewrap across rotations (with Key Protect's rewrap-on-unwrap), AAD and key
binding, instance isolation, the role table per action, purge destroying HSM objects for
good, secure import, the audit log (and that it never holds material), lazy expiry and
purge, the scheduler, key rings, aliases, registrations, policies, and compare-and-swap
between two service instances on one store.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinko import errors
from kinko.errors import KinkoError
from kinko.hsm.memory import MemoryDevice, MemoryHsm
from kinko.keys import model
from kinko.keys import records as rec
from kinko.keys.audit import FileAuditSink, MemoryAuditSink
from kinko.keys.auth import Principal, Role, TokenBook, issue_token
from kinko.keys.model import KeyState, RotationPolicy
from kinko.keys.results import KeyList, RegistrationList
from kinko.keys.service import KeyService
from kinko.store.memory import MemoryStore
from kinko.store.port import Op, Put, TxnResult
from kinko.store.sqlite import SqliteStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SEC, MIN, HOUR, DAY = (
    timedelta(seconds=1),
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(days=1),
)
INST, OTHER = "inst-1", "inst-2"
CRN1 = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:one"
CRN2 = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:two"
CRN3 = "crn:v1:bluemix:public:databases-for-redis:us-south:a/acct:inst::deployment:three"


def P(name: str, *roles: Role, instance: str = INST, service: bool = False) -> Principal:
    return Principal(name=name, instance=instance, roles=frozenset(roles), service=service)


ALICE = P("alice", Role.MANAGER)
BOB = P("bob", Role.MANAGER)
WRITER = P("wendy", Role.WRITER)
READER = P("rita", Role.READER)
READER_PLUS = P("rick", Role.READER_PLUS)
PURGER = P("pat", Role.KEY_PURGE)
COS = P("cos", Role.READER, service=True)
STRANGER = P("eve", Role.MANAGER, instance=OTHER)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class RecordingHsm(MemoryHsm):
    """The memory twin, noting every handle it was asked to destroy."""

    def __init__(self, device: MemoryDevice | None = None) -> None:
        super().__init__(device)
        self.destroyed: list[str] = []

    def destroy(self, handle: str) -> None:
        self.destroyed.append(handle)
        super().destroy(handle)


@dataclass
class World:
    store: MemoryStore
    hsm: RecordingHsm
    audit: MemoryAuditSink
    clock: Clock
    svc: KeyService

    def twin(self) -> KeyService:
        """A second service (another kinko process) on the same store and HSM device."""
        return KeyService(
            self.store,
            RecordingHsm(self.hsm.device),
            audit=self.audit,
            clock=self.clock,
            rng=os.urandom,
            import_key_bits=2048,
        )

    def key(self, key_id: str, instance: str = INST) -> model.Key:
        entry = self.store.get(rec.key_path(instance, key_id))
        assert entry is not None
        return rec.load_key(entry.value)


@pytest.fixture
def w() -> World:
    store, hsm, audit, clock = MemoryStore(), RecordingHsm(), MemoryAuditSink(), Clock()
    svc = KeyService(store, hsm, audit=audit, clock=clock, rng=os.urandom, import_key_bits=2048)
    return World(store, hsm, audit, clock, svc)


def reason(fn: Callable[[], object]) -> str:
    with pytest.raises(KinkoError) as info:
        fn()
    return info.value.reason_code


# --- create, read, list ------------------------------------------------------------------------


def test_create_root_key_lives_in_the_hsm(w: World) -> None:
    before = len(w.hsm.device.keys)
    key = w.svc.create_key(ALICE, INST, name="root-1", description="d", aliases=["r1"])
    assert (key.state, key.extractable, key.imported, key.aliases) == (
        KeyState.ACTIVE,
        False,
        False,
        ("r1",),
    )
    assert key.algorithm_bit_size == 256
    assert key.created_by == "alice"
    assert key.crn.endswith(f":{INST}:key:{key.id}")
    assert len(w.hsm.device.keys) == before + 1
    assert w.svc.get_key(ALICE, INST, "r1").payload is None
    assert w.svc.get_key_metadata(READER, INST, key.id) == key


def test_standard_key_payload_is_sealed_and_readable_by_reader_plus(w: World) -> None:
    material = os.urandom(100)
    key = w.svc.create_key(WRITER, INST, name="std-1", extractable=True, payload=material)
    assert (key.imported, key.algorithm_bit_size) == (True, 800)
    assert w.svc.get_key(READER_PLUS, INST, key.id).payload == material
    assert w.svc.get_key_metadata(READER, INST, key.id).payload is None
    assert reason(lambda: w.svc.get_key(READER, INST, key.id)) == "FORBIDDEN_ERR"
    stored = w.store.get(rec.key_path(INST, key.id))
    assert stored is not None
    assert material not in stored.value
    assert base64.b64encode(material) not in stored.value
    generated = w.svc.create_key(WRITER, INST, name="std-2", extractable=True)
    payload = w.svc.get_key(WRITER, INST, generated.id).payload
    assert payload is not None
    assert len(payload) == 32


def test_a_sealed_payload_cannot_move_to_another_key(w: World) -> None:
    a = w.svc.create_key(ALICE, INST, name="std-a", extractable=True, payload=b"A" * 32)
    b = w.svc.create_key(ALICE, INST, name="std-b", extractable=True, payload=b"B" * 32)
    entry_a = w.store.get(rec.key_path(INST, a.id))
    entry_b = w.store.get(rec.key_path(INST, b.id))
    assert entry_a is not None
    assert entry_b is not None
    key_b = rec.load_key(entry_b.value)
    moved = replace(
        key_b, versions=(replace(key_b.versions[0], sealed=w.key(a.id).versions[0].sealed),)
    )
    w.store.txn([Put(entry_b.key, rec.dump_key(moved), entry_b.mod_revision)])
    assert reason(lambda: w.svc.get_key(ALICE, INST, b.id)) == "INCOMPLETE_METADATA_ERR"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "x"}, "BAD_BODY_ERR"),
        ({"name": "ok-name", "payload": b"k" * 16}, "BAD_BODY_ERR"),
        ({"name": "ok-name", "extractable": True, "payload": b"k" * 7501}, "BAD_BODY_ERR"),
        ({"name": "ok-name", "key_ring": "nope"}, "KEY_RING_NOT_FOUND_ERR"),
        ({"name": "ok-name", "iv": b"i" * 12}, "BAD_BODY_ERR"),
        ({"name": "ok-name", "aliases": ["keys"]}, "BAD_BODY_ERR"),
        ({"name": "ok-name", "expiration_date": T0 - SEC}, "BAD_BODY_ERR"),
        (
            {"name": "ok-name", "extractable": True, "rotation": RotationPolicy(True, 1)},
            "KEY_ROOT_REQ_ERR",
        ),
    ],
)
def test_bad_create_changes_nothing(w: World, kwargs: dict[str, object], code: str) -> None:
    before = (len(w.hsm.device.keys), w.store.revision)
    assert reason(lambda: w.svc.create_key(ALICE, INST, **kwargs)) == code  # type: ignore[arg-type]
    assert (len(w.hsm.device.keys), w.store.revision) == before


def test_list_keys_filters_and_pages(w: World) -> None:
    root = w.svc.create_key(ALICE, INST, name="root-1")
    w.clock.advance(SEC)
    std = w.svc.create_key(ALICE, INST, name="std-1", extractable=True)
    w.clock.advance(SEC)
    gone = w.svc.create_key(ALICE, INST, name="gone-1")
    w.svc.delete_key(ALICE, INST, gone.id)
    w.svc.create_key(STRANGER, OTHER, name="theirs")

    def ids(lst: KeyList) -> list[str]:
        return [k.id for k in lst.keys]

    assert ids(w.svc.list_keys(READER, INST)) == [root.id, std.id]
    assert ids(w.svc.list_keys(READER, INST, states=[5])) == [gone.id]
    assert ids(w.svc.list_keys(READER, INST, states=[0, 1, 2, 3, 5])) == [
        root.id,
        std.id,
        gone.id,
    ]
    assert ids(w.svc.list_keys(READER, INST, extractable=True)) == [std.id]
    page = w.svc.list_keys(READER, INST, limit=1, offset=1)
    assert (ids(page), page.total) == ([std.id], 2)
    assert reason(lambda: w.svc.list_keys(READER, INST, limit=0)) == "BAD_BODY_ERR"
    assert reason(lambda: w.svc.list_keys(READER, INST, limit=5001)) == "BAD_BODY_ERR"
    assert reason(lambda: w.svc.list_keys(READER, INST, states=[4])) == "BAD_BODY_ERR"


def test_versions_newest_first_and_only_for_active_keys_unless_asked(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    w.clock.advance(HOUR)
    rotated = w.svc.rotate(WRITER, INST, key.id)
    versions = w.svc.get_versions(READER, INST, key.id)
    assert [v.id for v in versions.versions] == [rotated.key_version.id, key.key_version.id]
    assert versions.total == 2
    w.svc.disable(ALICE, INST, key.id)
    assert reason(lambda: w.svc.get_versions(READER, INST, key.id)) == (
        "KEY_ACTION_INVALID_STATE_ERR"
    )
    assert w.svc.get_versions(READER, INST, key.id, all_key_states=True).total == 2
    w.svc.delete_key(ALICE, INST, key.id)
    assert reason(lambda: w.svc.get_versions(READER, INST, key.id)) == "KEY_DELETED_ERR"


# --- wrap, unwrap, rewrap ----------------------------------------------------------------------


def test_wrap_unwrap_rewrap_across_rotations(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1", aliases=["kek"])
    first = w.svc.wrap(READER, INST, "kek", aad=["ns/secret", "x"])
    assert first.plaintext is not None
    assert len(first.plaintext) == 32
    assert first.key_version.id == key.key_version.id

    same = w.svc.unwrap(READER, INST, key.id, ciphertext=first.ciphertext, aad=["ns/secret", "x"])
    assert same.plaintext == first.plaintext
    assert (same.ciphertext, same.rewrapped_key_version) == (None, None)

    w.clock.advance(HOUR)
    v2 = w.svc.rotate(WRITER, INST, key.id).key_version
    w.clock.advance(HOUR)
    v3 = w.svc.rotate(WRITER, INST, key.id).key_version
    second = w.svc.wrap(READER, INST, key.id, plaintext=b"my dek", aad=[])
    assert second.key_version == v3
    assert second.plaintext is None

    old = w.svc.unwrap(READER, INST, key.id, ciphertext=first.ciphertext, aad=["ns/secret", "x"])
    assert old.plaintext == first.plaintext
    assert old.key_version == first.key_version
    assert old.rewrapped_key_version == v3
    assert old.ciphertext is not None
    again = w.svc.unwrap(READER, INST, key.id, ciphertext=old.ciphertext, aad=["ns/secret", "x"])
    assert (again.plaintext, again.key_version, again.ciphertext) == (first.plaintext, v3, None)

    rewrapped = w.svc.rewrap(
        READER, INST, key.id, ciphertext=first.ciphertext, aad=["ns/secret", "x"]
    )
    assert (rewrapped.key_version, rewrapped.rewrapped_key_version) == (first.key_version, v3)
    back = w.svc.unwrap(
        READER, INST, key.id, ciphertext=rewrapped.ciphertext, aad=["ns/secret", "x"]
    )
    assert back.plaintext == first.plaintext
    assert v2 != v3
    assert w.svc.unwrap(READER, INST, key.id, ciphertext=second.ciphertext).plaintext == b"my dek"


def test_ciphertext_binds_aad_key_and_version(w: World) -> None:
    a = w.svc.create_key(ALICE, INST, name="key-a")
    b = w.svc.create_key(ALICE, INST, name="key-b")
    wrapped = w.svc.wrap(READER, INST, a.id, plaintext=b"dek", aad=["one"])

    def unwrap(key: str, ct: str, aad: list[str]) -> Callable[[], object]:
        return lambda: w.svc.unwrap(READER, INST, key, ciphertext=ct, aad=aad)

    code = "UNPROCESSABLE_CIPHERTEXT_ERR"
    assert reason(unwrap(a.id, wrapped.ciphertext, ["two"])) == code
    assert reason(unwrap(a.id, wrapped.ciphertext, [])) == code
    assert reason(unwrap(a.id, wrapped.ciphertext, ["one", ""])) == code
    assert reason(unwrap(b.id, wrapped.ciphertext, ["one"])) == code
    # Key B's record pointing at key A's HSM object still refuses: the AAD names the key.
    key_a, entry_b = w.key(a.id), w.store.get(rec.key_path(INST, b.id))
    assert entry_b is not None
    key_b = rec.load_key(entry_b.value)
    same_object = replace(key_b, versions=(replace(key_a.versions[0]),))
    w.store.txn([Put(entry_b.key, rec.dump_key(same_object), entry_b.mod_revision)])
    assert reason(unwrap(b.id, wrapped.ciphertext, ["one"])) == code
    assert reason(unwrap(a.id, "garbage", ["one"])) == code
    assert reason(lambda: w.svc.rewrap(READER, INST, a.id, ciphertext="x", aad=[])) == code
    assert reason(lambda: w.svc.wrap(READER, INST, a.id, aad=["y" * 256])) == "BAD_BODY_ERR"
    assert reason(lambda: w.svc.wrap(READER, INST, a.id, plaintext=b"")) == "BAD_BODY_ERR"


def test_wrap_follows_the_state_table(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1", expiration_date=T0 + DAY)
    ct = w.svc.wrap(READER, INST, key.id).ciphertext
    w.svc.disable(ALICE, INST, key.id)
    assert reason(lambda: w.svc.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
    assert reason(lambda: w.svc.unwrap(READER, INST, key.id, ciphertext=ct)) == (
        "KEY_ACTION_INVALID_STATE_ERR"
    )
    w.clock.advance(DAY)
    assert w.svc.get_key_metadata(READER, INST, key.id).state is KeyState.DEACTIVATED
    assert reason(lambda: w.svc.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
    assert w.svc.unwrap(READER, INST, key.id, ciphertext=ct).plaintext
    std = w.svc.create_key(ALICE, INST, name="std-1", extractable=True)
    assert reason(lambda: w.svc.wrap(READER, INST, std.id)) == "KEY_ROOT_REQ_ERR"


# --- isolation and roles -----------------------------------------------------------------------


def test_instances_are_tenants(w: World) -> None:
    mine = w.svc.create_key(ALICE, INST, name="root-1", aliases=["shared-name"])
    theirs = w.svc.create_key(STRANGER, OTHER, name="root-2", aliases=["shared-name"])
    assert reason(lambda: w.svc.get_key_metadata(STRANGER, INST, mine.id)) == "UNAUTHORIZED_ERR"
    assert reason(lambda: w.svc.get_key_metadata(STRANGER, OTHER, mine.id)) == "KEY_NOT_FOUND_ERR"
    assert reason(lambda: w.svc.wrap(ALICE, INST, theirs.id)) == "KEY_NOT_FOUND_ERR"
    assert w.svc.get_key_metadata(STRANGER, OTHER, "shared-name").id == theirs.id
    assert w.svc.get_key_metadata(ALICE, INST, "shared-name").id == mine.id
    ct = w.svc.wrap(ALICE, INST, mine.id).ciphertext
    assert reason(lambda: w.svc.unwrap(STRANGER, OTHER, theirs.id, ciphertext=ct)) == (
        "UNPROCESSABLE_CIPHERTEXT_ERR"
    )
    assert [k.id for k in w.svc.list_keys(STRANGER, OTHER).keys] == [theirs.id]


ALL_ROLES = (Role.READER, Role.READER_PLUS, Role.WRITER, Role.MANAGER, Role.KEY_PURGE)
READERS = {Role.READER, Role.READER_PLUS, Role.WRITER, Role.MANAGER}
WRITERS = {Role.WRITER, Role.MANAGER}
MANAGERS = {Role.MANAGER}

Call = Callable[[KeyService, Principal, str], object]
ROLE_TABLE: list[tuple[str, Call, set[Role]]] = [
    ("create", lambda s, p, k: s.create_key(p, INST, name="new-key"), WRITERS),
    ("get", lambda s, p, k: s.get_key(p, INST, k), {Role.READER_PLUS, *WRITERS}),
    ("metadata", lambda s, p, k: s.get_key_metadata(p, INST, k), READERS),
    ("list", lambda s, p, k: s.list_keys(p, INST), READERS),
    ("versions", lambda s, p, k: s.get_versions(p, INST, k), READERS),
    ("wrap", lambda s, p, k: s.wrap(p, INST, k), READERS),
    ("rotate", lambda s, p, k: s.rotate(p, INST, k), WRITERS),
    ("disable", lambda s, p, k: s.disable(p, INST, k), MANAGERS),
    ("enable", lambda s, p, k: s.enable(p, INST, k), MANAGERS),
    ("set", lambda s, p, k: s.set_key_for_deletion(p, INST, k), WRITERS),
    ("unset", lambda s, p, k: s.unset_key_for_deletion(p, INST, k), WRITERS),
    ("delete", lambda s, p, k: s.delete_key(p, INST, k), MANAGERS),
    ("restore", lambda s, p, k: s.restore_key(p, INST, k), MANAGERS),
    ("purge", lambda s, p, k: s.purge_key(p, INST, k), {Role.KEY_PURGE}),
    ("sync", lambda s, p, k: s.sync_key(p, INST, k), WRITERS),
    ("policies", lambda s, p, k: s.get_key_policies(p, INST, k), MANAGERS),
    ("put-policies", lambda s, p, k: s.put_key_policies(p, INST, k), MANAGERS),
    ("instance-policies", lambda s, p, k: s.get_instance_policies(p, INST), MANAGERS),
    ("put-instance-policies", lambda s, p, k: s.put_instance_policies(p, INST), MANAGERS),
    ("import-token", lambda s, p, k: s.create_import_token(p, INST), WRITERS),
    ("get-import-token", lambda s, p, k: s.get_import_token(p, INST), WRITERS),
    ("registrations", lambda s, p, k: s.list_registrations(p, INST, k), READERS),
    ("all-registrations", lambda s, p, k: s.list_registrations(p, INST), READERS),
    ("alias", lambda s, p, k: s.create_alias(p, INST, k, "new-alias"), WRITERS),
    ("unalias", lambda s, p, k: s.delete_alias(p, INST, k, "the-alias"), WRITERS),
    ("rings", lambda s, p, k: s.list_key_rings(p, INST), READERS),
    ("ring", lambda s, p, k: s.create_key_ring(p, INST, "ring-a"), WRITERS),
    ("unring", lambda s, p, k: s.delete_key_ring(p, INST, "ring-b"), MANAGERS),
    ("move", lambda s, p, k: s.move_key(p, INST, k, key_ring_id="ring-b"), MANAGERS),
]


@pytest.mark.parametrize(("name", "call", "allowed"), ROLE_TABLE, ids=[r[0] for r in ROLE_TABLE])
@pytest.mark.parametrize("role", ALL_ROLES, ids=[r.value for r in ALL_ROLES])
def test_role_table(w: World, name: str, call: Call, allowed: set[Role], role: Role) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1", aliases=["the-alias"])
    w.svc.create_key_ring(ALICE, INST, "ring-b")
    w.svc.create_import_token(ALICE, INST)
    caller = P(f"user-{role.value}", role)
    if role not in allowed:
        with pytest.raises(errors.Forbidden) as info:
            call(w.svc, caller, key.id)
        assert info.value.reason_code == "FORBIDDEN_ERR"
        assert (w.audit.records[-1].outcome, w.audit.records[-1].reason) == (
            "failure",
            "FORBIDDEN_ERR",
        )
        return
    # Allowed: the call may still fail on a lifecycle rule, but never on the role check.
    with contextlib.suppress(KinkoError):
        call(w.svc, caller, key.id)
    assert w.audit.records[-1].reason not in ("FORBIDDEN_ERR", "UNAUTHORIZED_ERR"), name


def test_registrations_are_for_service_identities(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    for who in (ALICE, READER, WRITER):
        refused = functools.partial(w.svc.create_registration, who, INST, key.id, CRN1)
        assert reason(refused) == "SERVICE_ONLY_ERR"
    assert (
        reason(lambda: w.svc.delete_registration(ALICE, INST, key.id, CRN1)) == "SERVICE_ONLY_ERR"
    )
    no_role = P("svc", service=True)
    assert reason(lambda: w.svc.create_registration(no_role, INST, key.id, CRN1)) == "FORBIDDEN_ERR"
    reg = w.svc.create_registration(COS, INST, key.id, CRN1, description="bucket one")
    assert (reg.key_id, reg.created_by, reg.key_version_id) == (key.id, "cos", key.key_version.id)


# --- deletion guards through the service -------------------------------------------------------


def test_dual_authorization_delete(w: World) -> None:
    w.svc.put_instance_policies(ALICE, INST, dual_auth_delete=True)
    key = w.svc.create_key(WRITER, INST, name="root-1")
    assert key.dual_auth_delete.enabled
    assert reason(lambda: w.svc.delete_key(ALICE, INST, key.id)) == "AUTHORIZATIONS_NOT_MET"
    view = w.svc.set_key_for_deletion(WRITER, INST, key.id)
    assert view.dual_auth_delete.key_set_for_deletion
    assert view.dual_auth_delete.auth_expiration == T0 + 7 * DAY
    writer_as_manager = P("wendy", Role.MANAGER)
    assert reason(lambda: w.svc.delete_key(writer_as_manager, INST, key.id)) == (
        "AUTHORIZATIONS_NOT_MET"
    )
    w.svc.unset_key_for_deletion(WRITER, INST, key.id)
    assert reason(lambda: w.svc.delete_key(BOB, INST, key.id)) == "AUTHORIZATIONS_NOT_MET"
    w.svc.set_key_for_deletion(ALICE, INST, key.id)
    w.clock.advance(7 * DAY)
    assert reason(lambda: w.svc.delete_key(BOB, INST, key.id)) == "AUTHORIZATIONS_NOT_MET"
    w.svc.set_key_for_deletion(ALICE, INST, key.id)
    deleted = w.svc.delete_key(BOB, INST, key.id)
    assert (deleted.state, deleted.deleted_by) == (KeyState.DESTROYED, "bob")
    plain = w.svc.create_key_with_policies(WRITER, INST, name="root-2", dual_auth_delete=False)
    assert reason(lambda: w.svc.set_key_for_deletion(WRITER, INST, plain.id)) == "NOT_DUAL_AUTH_ERR"


def test_registrations_guard_deletion(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    w.svc.create_registration(COS, INST, key.id, CRN1)
    w.svc.create_registration(COS, INST, key.id, CRN2, prevent_key_deletion=True)
    assert reason(lambda: w.svc.delete_key(ALICE, INST, key.id)) == "PREV_KEY_DEL_ERR"
    assert reason(lambda: w.svc.delete_key(ALICE, INST, key.id, force=True)) == "PREV_KEY_DEL_ERR"
    w.svc.update_registration(COS, INST, key.id, CRN2, prevent_key_deletion=False)
    assert reason(lambda: w.svc.delete_key(ALICE, INST, key.id)) == "PROTECTED_RESOURCE_ERR"
    deleted = w.svc.delete_key(ALICE, INST, key.id, force=True)
    assert deleted.state is KeyState.DESTROYED
    assert deleted.registration_count == 2


def test_registration_listing_filters(w: World) -> None:
    a = w.svc.create_key(ALICE, INST, name="root-a")
    b = w.svc.create_key(ALICE, INST, name="root-b")
    w.svc.create_registration(COS, INST, a.id, CRN1)
    w.clock.advance(SEC)
    w.svc.create_registration(COS, INST, b.id, CRN2, prevent_key_deletion=True)
    w.clock.advance(SEC)
    w.svc.create_registration(COS, INST, b.id, CRN3)

    def crns(lst: RegistrationList) -> list[str]:
        return [r.resource_crn for r in lst.registrations]

    assert crns(w.svc.list_registrations(READER, INST)) == [CRN1, CRN2, CRN3]
    assert crns(w.svc.list_registrations(READER, INST, b.id)) == [CRN2, CRN3]
    assert crns(w.svc.list_registrations(READER, INST, prevent_key_deletion=True)) == [CRN2]
    query = "crn:v1:bluemix:public:cloud-object-storage:*"
    assert crns(w.svc.list_registrations(READER, INST, crn_query=query)) == [CRN1, CRN2]
    page = w.svc.list_registrations(READER, INST, limit=1, offset=2)
    assert (crns(page), page.total) == ([CRN3], 3)
    w.clock.advance(HOUR)
    v2 = w.svc.rotate(ALICE, INST, b.id).key_version
    replaced = w.svc.replace_registration(COS, INST, b.id, CRN3, key_version_id=v2.id)
    assert replaced.key_version_id == v2.id
    assert reason(
        lambda: w.svc.replace_registration(COS, INST, b.id, CRN3, key_version_id=b.key_version.id)
    ) == ("KEY_VERSION_INVALID")
    w.svc.delete_registration(COS, INST, b.id, CRN3)
    assert crns(w.svc.list_registrations(READER, INST, b.id)) == [CRN2]


# --- restore, purge, crypto-shredding ----------------------------------------------------------


def test_delete_restore_timeline(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    ct = w.svc.wrap(READER, INST, key.id).ciphertext
    deleted = w.svc.delete_key(ALICE, INST, key.id)
    assert deleted.purge_allowed_from == T0 + 4 * HOUR
    assert deleted.purge_scheduled_on == T0 + 90 * DAY
    assert not deleted.purge_allowed
    assert reason(lambda: w.svc.unwrap(READER, INST, key.id, ciphertext=ct)) == "KEY_DELETED_ERR"
    assert reason(lambda: w.svc.restore_key(ALICE, INST, key.id)) == "REQ_TOO_EARLY_ERR"
    w.clock.advance(30 * SEC)
    assert w.svc.restore_key(ALICE, INST, key.id).state is KeyState.ACTIVE
    assert w.svc.unwrap(READER, INST, key.id, ciphertext=ct).plaintext
    w.svc.delete_key(ALICE, INST, key.id)
    w.clock.advance(31 * DAY)
    assert reason(lambda: w.svc.restore_key(ALICE, INST, key.id)) == "KEY_RESTORE_EXPIRED"


def test_purge_destroys_the_hsm_objects_for_good(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1", aliases=["doomed"])
    ct1 = w.svc.wrap(READER, INST, key.id).ciphertext
    w.clock.advance(HOUR)
    w.svc.rotate(WRITER, INST, key.id)
    handles = [v.hsm_handle for v in w.key(key.id).versions]
    backup = w.store.get(rec.key_path(INST, key.id))
    assert backup is not None
    w.svc.delete_key(ALICE, INST, key.id)
    assert reason(lambda: w.svc.purge_key(PURGER, INST, key.id)) == "REQ_TOO_EARLY_ERR"
    assert reason(lambda: w.svc.purge_key(ALICE, INST, key.id)) == "FORBIDDEN_ERR"
    w.clock.advance(4 * HOUR)
    purged = w.svc.purge_key(PURGER, INST, key.id)
    assert purged.state is KeyState.DESTROYED
    assert sorted(w.hsm.destroyed) == sorted(h for h in handles if h is not None)
    assert all(h not in w.hsm.device.keys for h in handles)
    assert reason(lambda: w.svc.get_key_metadata(ALICE, INST, key.id)) == "KEY_NOT_FOUND_ERR"
    assert reason(lambda: w.svc.get_key_metadata(ALICE, INST, "doomed")) == "KEY_NOT_FOUND_ERR"
    # Even a store restored from a backup cannot bring the material back.
    w.store.txn([Put(backup.key, backup.value, 0)])
    assert reason(lambda: w.svc.unwrap(READER, INST, key.id, ciphertext=ct1)) == (
        "INCOMPLETE_METADATA_ERR"
    )
    # The alias is free again.
    w.svc.create_key(ALICE, INST, name="root-2", aliases=["doomed"])


def test_reading_a_key_deleted_90_days_ago_purges_it(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    handle = w.key(key.id).latest_version.hsm_handle
    w.svc.delete_key(ALICE, INST, key.id)
    w.clock.advance(90 * DAY - SEC)
    assert w.svc.get_key_metadata(ALICE, INST, key.id).state is KeyState.DESTROYED
    w.clock.advance(SEC)
    assert reason(lambda: w.svc.get_key_metadata(ALICE, INST, key.id)) == "KEY_NOT_FOUND_ERR"
    assert w.hsm.destroyed == [handle]
    assert w.store.get(rec.key_path(INST, key.id)) is None
    purge = [r for r in w.audit.records if r.action == "kms.secrets.purge"]
    assert [(r.who, r.outcome, r.key_id) for r in purge] == [("kinko-scheduler", "success", key.id)]


def test_an_interrupted_purge_is_finished_later(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    w.svc.delete_key(ALICE, INST, key.id)
    w.clock.advance(5 * HOUR)
    w.hsm.device.online = False
    assert reason(lambda: w.svc.purge_key(PURGER, INST, key.id)) == "SERVICE_UNAVAILABLE_ERR"
    assert w.key(key.id).purge_started is not None
    assert reason(lambda: w.svc.get_key_metadata(ALICE, INST, key.id)) == "KEY_NOT_FOUND_ERR"
    w.hsm.device.online = True
    run = w.svc.run_scheduled()
    assert run.purged == (key.id,)
    assert w.store.get(rec.key_path(INST, key.id)) is None


# --- the scheduler -----------------------------------------------------------------------------


def test_scheduler_rotates_expires_and_purges(w: World) -> None:
    rotating = w.svc.create_key_with_policies(
        ALICE, INST, name="rot-1", rotation=RotationPolicy(enabled=True, interval_month=1)
    )
    w.svc.put_instance_policies(ALICE, INST, rotation=RotationPolicy(True, interval_month=2))
    inherited = w.svc.create_key(ALICE, INST, name="rot-2")
    imported = w.svc.create_key(ALICE, INST, name="imp-1", payload=os.urandom(32))
    expiring = w.svc.create_key(ALICE, INST, name="exp-1", expiration_date=T0 + 10 * DAY)
    doomed = w.svc.create_key(ALICE, INST, name="del-1")
    w.svc.delete_key(ALICE, INST, doomed.id)
    assert imported.rotation is None
    assert inherited.rotation is not None

    assert w.key(expiring.id).state is KeyState.ACTIVE
    early = w.svc.run_scheduled(T0 + 29 * DAY)
    assert (early.rotated, early.expired) == ((), (expiring.id,))
    assert w.key(expiring.id).state is KeyState.DEACTIVATED
    w.clock.advance(30 * DAY)
    run = w.svc.run_scheduled()
    assert (run.rotated, run.expired) == ((rotating.id,), ())
    assert len(w.key(rotating.id).versions) == 2
    assert w.svc.run_scheduled().rotated == ()
    w.clock.advance(30 * DAY)
    assert set(w.svc.run_scheduled().rotated) == {rotating.id, inherited.id}
    w.clock.advance(30 * DAY)
    run = w.svc.run_scheduled()
    assert run.purged == (doomed.id,)
    assert run.failed == ()
    assert len(w.key(imported.id).versions) == 1
    actions = [(r.action, r.key_id) for r in w.audit.records if r.who == "kinko-scheduler"]
    assert ("kms.secrets.expire", expiring.id) in actions
    assert ("kms.secrets.rotate", rotating.id) in actions


def test_scheduler_goes_past_a_corrupt_record(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1", expiration_date=T0 + DAY)
    w.store.txn([Put(rec.key_path(INST, "00000000-0000-4000-8000-000000000000"), b"{", 0)])
    run = w.svc.run_scheduled(T0 + 2 * DAY)
    assert run.expired == (key.id,)
    assert [code for _, code in run.failed] == ["INCOMPLETE_METADATA_ERR"]


# --- secure import -----------------------------------------------------------------------------


def _secure_payload(
    pem: bytes, nonce: bytes, material: bytes, *, iv: bytes | None = None
) -> tuple[bytes, bytes, bytes]:
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, rsa.RSAPublicKey)
    payload = public.encrypt(
        material,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    iv = iv or os.urandom(12)
    return payload, AESGCM(material).encrypt(iv, nonce, None), iv


def test_secure_import_round_trip(w: World) -> None:
    info = w.svc.create_import_token(WRITER, INST, expiration=600, max_allowed_retrievals=2)
    assert (info.remaining_retrievals, info.expiration_date) == (2, T0 + 10 * MIN)
    token = w.svc.get_import_token(WRITER, INST)
    assert token.info.remaining_retrievals == 1
    assert token.public_key_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    material = os.urandom(32)
    payload, enc_nonce, iv = _secure_payload(token.public_key_pem, token.nonce, material)
    key = w.svc.create_key(
        WRITER,
        INST,
        name="byok-1",
        payload=payload,
        encrypted_nonce=enc_nonce,
        iv=iv,
        encryption_algorithm="RSAES_OAEP_SHA_256",
    )
    assert key.imported
    # The HSM holds exactly the customer's material: decrypt a wrap independently.
    wrapped = w.svc.wrap(READER, INST, key.id, plaintext=b"secret dek", aad=["a"])
    inner = json.loads(base64.b64decode(wrapped.ciphertext))
    aad = model.wrap_aad(instance=INST, key_id=key.id, version_id=inner["handle"], aad=["a"])
    opened = AESGCM(material).decrypt(
        base64.b64decode(inner["iv"]), base64.b64decode(inner["ciphertext"]), aad
    )
    assert opened == b"secret dek"
    # Rotation of an imported key takes new material, securely too.
    w.clock.advance(HOUR)
    assert reason(lambda: w.svc.rotate(WRITER, INST, key.id)) == "KEY_PAYLOAD_REQ_ERR"
    assert reason(lambda: w.svc.rotate(WRITER, INST, key.id, payload=payload)) == (
        "BAD_BODY_ERR"  # RSA ciphertext given as plain material: wrong size.
    )
    assert reason(lambda: w.svc.get_import_token(WRITER, INST)) == "IMPORT_TOKEN_EXPIRED_ERR"
    w.svc.create_import_token(WRITER, INST)
    token = w.svc.get_import_token(WRITER, INST)
    payload2, enc2, iv2 = _secure_payload(token.public_key_pem, token.nonce, os.urandom(32))
    rotated = w.svc.rotate(WRITER, INST, key.id, payload=payload2, encrypted_nonce=enc2, iv=iv2)
    assert rotated.version_count == 2
    assert reason(lambda: w.svc.get_import_token(WRITER, INST)) == "IMPORT_TOKEN_EXPIRED_ERR"


def test_secure_import_checks_the_nonce_and_the_token(w: World) -> None:
    assert reason(lambda: w.svc.get_import_token(WRITER, INST)) == "NOT_FOUND_ERR"
    w.svc.create_import_token(WRITER, INST, max_allowed_retrievals=5)
    token = w.svc.get_import_token(WRITER, INST)
    material = os.urandom(32)
    payload, enc_nonce, iv = _secure_payload(token.public_key_pem, token.nonce, material)

    def create(**kw: Any) -> Callable[[], object]:
        return functools.partial(w.svc.create_key, WRITER, INST, name="byok-1", **kw)

    wrong_nonce = AESGCM(material).encrypt(iv, b"x" * 12, None)
    before = len(w.hsm.device.keys)
    assert reason(create(payload=payload, encrypted_nonce=wrong_nonce, iv=iv)) == (
        "INCORRECT_NONCE_ERR"
    )
    assert reason(create(payload=payload, encrypted_nonce=enc_nonce, iv=os.urandom(12))) == (
        "INCORRECT_NONCE_IV_ERR"
    )
    assert reason(create(payload=payload, encrypted_nonce=enc_nonce, iv=b"short")) == (
        "INCORRECT_NONCE_IV_ERR"
    )
    assert reason(create(payload=b"\x00" * 256, encrypted_nonce=enc_nonce, iv=iv)) == (
        "BAD_BODY_ERR"
    )
    assert reason(
        create(payload=payload, encrypted_nonce=enc_nonce, iv=iv, encryption_algorithm="RSA_PKCS1")
    ) == ("BAD_BODY_ERR")
    assert reason(create(payload=payload, encrypted_nonce=enc_nonce)) == "BAD_BODY_ERR"
    assert reason(
        lambda: w.svc.create_key(
            WRITER,
            INST,
            name="std",
            extractable=True,
            payload=payload,
            encrypted_nonce=enc_nonce,
            iv=iv,
        )
    ) == ("BAD_BODY_ERR")
    assert len(w.hsm.device.keys) == before
    # A new token replaces the old one: payloads for the old key no longer decrypt.
    w.svc.create_import_token(WRITER, INST)
    assert reason(create(payload=payload, encrypted_nonce=enc_nonce, iv=iv)) == "BAD_BODY_ERR"
    token = w.svc.get_import_token(WRITER, INST)
    payload, enc_nonce, iv = _secure_payload(token.public_key_pem, token.nonce, material)
    w.clock.advance(10 * MIN)
    assert reason(create(payload=payload, encrypted_nonce=enc_nonce, iv=iv)) == (
        "IMPORT_TOKEN_EXPIRED_ERR"
    )
    assert reason(lambda: w.svc.create_import_token(WRITER, INST, expiration=10)) == "BAD_BODY_ERR"


def test_import_token_private_key_is_sealed(w: World) -> None:
    w.svc.create_import_token(WRITER, INST)
    entry = w.store.get(rec.import_token_path(INST))
    assert entry is not None
    token = rec.load_import_token(entry.value)
    assert b"PRIVATE" not in entry.value
    # The sealed blob is an AES-GCM ciphertext, not a DER private key.
    with pytest.raises(ValueError):  # noqa: PT011
        serialization.load_der_private_key(token.sealed_private_key.ciphertext, password=None)


# --- aliases, rings, policies ------------------------------------------------------------------


def test_aliases_are_unique_per_instance_and_limited_per_key(w: World) -> None:
    a = w.svc.create_key(ALICE, INST, name="root-a", aliases=["one"])
    b = w.svc.create_key(ALICE, INST, name="root-b")
    before = len(w.hsm.device.keys)
    assert reason(lambda: w.svc.create_key(ALICE, INST, name="root-c", aliases=["one"])) == (
        "KEY_ALIAS_NOT_UNIQUE_ERR"
    )
    assert len(w.hsm.device.keys) == before
    assert reason(lambda: w.svc.create_alias(WRITER, INST, b.id, "one")) == (
        "KEY_ALIAS_NOT_UNIQUE_ERR"
    )
    entry = w.svc.create_alias(WRITER, INST, a.id, "two")
    assert (entry.alias, entry.key_id, entry.created_by) == ("two", a.id, "wendy")
    for alias in ("three", "four", "five"):
        w.svc.create_alias(WRITER, INST, "one", alias)
    assert reason(lambda: w.svc.create_alias(WRITER, INST, a.id, "six")) == "KEY_ALIAS_QUOTA_ERR"
    w.svc.delete_alias(WRITER, INST, a.id, "one")
    assert reason(lambda: w.svc.get_key_metadata(READER, INST, "one")) == "KEY_NOT_FOUND_ERR"
    w.svc.create_alias(WRITER, INST, b.id, "one")
    assert w.svc.get_key_metadata(READER, INST, "one").id == b.id
    assert w.svc.get_key_metadata(READER, INST, "five").aliases == ("two", "three", "four", "five")


def test_key_rings(w: World) -> None:
    assert [r.id for r in w.svc.list_key_rings(READER, INST).key_rings] == ["default"]
    ring = w.svc.create_key_ring(WRITER, INST, "team-a")
    assert (ring.id, ring.created_by) == ("team-a", "wendy")
    assert reason(lambda: w.svc.create_key_ring(WRITER, INST, "team-a")) == "CONFLICT_ERR"
    key = w.svc.create_key(WRITER, INST, name="root-1", key_ring="team-a")
    assert key.key_ring_id == "team-a"
    assert w.svc.get_key_metadata(READER, INST, key.id, key_ring="team-a").id == key.id
    assert reason(lambda: w.svc.get_key_metadata(READER, INST, key.id, key_ring="default")) == (
        "KEY_NOT_FOUND_ERR"
    )
    assert [k.id for k in w.svc.list_keys(READER, INST, key_ring="team-a").keys] == [key.id]
    assert reason(lambda: w.svc.delete_key_ring(ALICE, INST, "team-a")) == "KEY_RING_NOT_EMPTY_ERR"
    assert reason(lambda: w.svc.move_key(ALICE, INST, key.id, key_ring_id="nope")) == (
        "KEY_RING_NOT_FOUND_ERR"
    )
    moved = w.svc.move_key(ALICE, INST, key.id, key_ring_id="default")
    assert moved.key_ring_id == "default"
    w.svc.move_key(ALICE, INST, key.id, key_ring_id="team-a")
    w.svc.delete_key(ALICE, INST, key.id)
    assert reason(lambda: w.svc.delete_key_ring(ALICE, INST, "team-a")) == "KEY_RING_NOT_EMPTY_ERR"
    w.svc.delete_key_ring(ALICE, INST, "team-a", force=True)
    assert w.key(key.id).key_ring_id == "default"
    assert reason(lambda: w.svc.delete_key_ring(ALICE, INST, "team-a")) == "KEY_RING_NOT_FOUND_ERR"
    assert reason(lambda: w.svc.delete_key_ring(ALICE, INST, "default")) == "BAD_BODY_ERR"
    assert reason(lambda: w.svc.create_key(WRITER, INST, name="k2", key_ring="team-a")) == (
        "KEY_RING_NOT_FOUND_ERR"
    )


def test_key_and_instance_policies(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    policies = w.svc.get_key_policies(ALICE, INST, key.id)
    assert (policies.rotation, policies.dual_auth_delete) == (None, None)
    policies = w.svc.put_key_policies(
        ALICE, INST, key.id, rotation=RotationPolicy(True, 3), dual_auth_delete=True
    )
    assert policies.rotation is not None
    assert policies.rotation.interval_month == 3
    assert policies.rotation.stamp is not None
    assert policies.rotation.stamp.created_by == "alice"
    assert policies.dual_auth_delete is not None
    assert policies.dual_auth_delete.enabled
    assert reason(lambda: w.svc.put_key_policies(ALICE, INST, key.id, dual_auth_delete=False)) == (
        "BAD_BODY_ERR"
    )
    imported = w.svc.create_key(ALICE, INST, name="imp-1", payload=os.urandom(32))
    assert reason(
        lambda: w.svc.put_key_policies(ALICE, INST, imported.id, rotation=RotationPolicy(True, 1))
    ) == ("BAD_BODY_ERR")
    inst = w.svc.put_instance_policies(ALICE, INST, dual_auth_delete=True)
    assert inst.dual_auth_delete
    assert w.svc.get_instance_policies(BOB, INST) == inst
    assert not w.svc.get_instance_policies(STRANGER, OTHER).dual_auth_delete


def test_enable_and_disable_through_the_service(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    assert w.svc.disable(ALICE, INST, key.id).state is KeyState.SUSPENDED
    assert reason(lambda: w.svc.enable(ALICE, INST, key.id)) == "REQ_TOO_EARLY_ERR"
    w.clock.advance(30 * SEC)
    assert w.svc.enable(ALICE, INST, key.id).state is KeyState.ACTIVE
    assert reason(lambda: w.svc.enable(ALICE, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"


def test_corrupt_record_is_incomplete_metadata(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    entry = w.store.get(rec.key_path(INST, key.id))
    assert entry is not None
    doc = json.loads(entry.value)
    del doc["versions"]
    w.store.txn([Put(entry.key, json.dumps(doc).encode(), entry.mod_revision)])
    assert reason(lambda: w.svc.get_key_metadata(ALICE, INST, key.id)) == "INCOMPLETE_METADATA_ERR"


# --- audit -------------------------------------------------------------------------------------


def test_every_call_is_audited_without_material(w: World) -> None:
    imported = os.urandom(32)
    std_payload = os.urandom(48)
    root = w.svc.create_key(ALICE, INST, name="root-1", payload=imported, aliases=["al"])
    std = w.svc.create_key(ALICE, INST, name="std-1", extractable=True, payload=std_payload)
    wrapped = w.svc.wrap(READER, INST, root.id, aad=["aad-text"], correlation_id="corr-1")
    assert wrapped.plaintext is not None
    unwrapped = w.svc.unwrap(READER, INST, root.id, ciphertext=wrapped.ciphertext, aad=["aad-text"])
    w.svc.get_key(READER_PLUS, INST, std.id)
    reason(lambda: w.svc.unwrap(READER, INST, root.id, ciphertext=wrapped.ciphertext, aad=["no"]))
    reason(lambda: w.svc.delete_key(READER, INST, root.id))
    text = "\n".join(w.audit.lines())
    secrets = [imported, std_payload, wrapped.plaintext, unwrapped.plaintext]
    for secret in secrets:
        for form in (
            base64.b64encode(secret),
            base64.urlsafe_b64encode(secret),
            secret.hex().encode(),
        ):
            assert form.decode() not in text
    assert wrapped.ciphertext not in text
    assert json.loads(base64.b64decode(wrapped.ciphertext))["ciphertext"] not in text
    assert "aad-text" not in text
    records = w.audit.records
    assert [(r.action, r.outcome, r.reason) for r in records] == [
        ("kms.secrets.create", "success", None),
        ("kms.secrets.create", "success", None),
        ("kms.secrets.wrap", "success", None),
        ("kms.secrets.unwrap", "success", None),
        ("kms.secrets.read", "success", None),
        ("kms.secrets.unwrap", "failure", "UNPROCESSABLE_CIPHERTEXT_ERR"),
        ("kms.secrets.delete", "failure", "FORBIDDEN_ERR"),
    ]
    wrap = records[2]
    assert (wrap.who, wrap.instance, wrap.key_id, wrap.key_version, wrap.correlation_id) == (
        "rita",
        INST,
        root.id,
        root.key_version.id,
        "corr-1",
    )
    for line in w.audit.lines():
        assert set(json.loads(line)) == {
            "timestamp",
            "action",
            "outcome",
            "reason",
            "who",
            "tokenId",
            "instance",
            "keyId",
            "keyVersion",
            "resource",
            "correlationId",
        }


def test_file_audit_sink_appends_json_lines(tmp_path: Path, w: World) -> None:
    path = tmp_path / "audit.log"
    with FileAuditSink(path) as sink:
        svc = KeyService(w.store, w.hsm, audit=sink, clock=w.clock, rng=os.urandom)
        key = svc.create_key(ALICE, INST, name="root-1")
        svc.wrap(READER, INST, key.id)
        reason(lambda: svc.purge_key(ALICE, INST, key.id))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["action"] for x in lines] == [
        "kms.secrets.create",
        "kms.secrets.wrap",
        "kms.secrets.purge",
    ]
    assert json.loads(lines[2])["reason"] == "FORBIDDEN_ERR"
    assert path.stat().st_mode & 0o777 == 0o600
    with FileAuditSink(path) as sink:
        KeyService(w.store, w.hsm, audit=sink, clock=w.clock, rng=os.urandom).list_keys(ALICE, INST)
    assert len(path.read_text().splitlines()) == 4


def test_tokens_authenticate_and_refusals_are_audited(w: World) -> None:
    issued = issue_token(rng=os.urandom, instance=INST, roles=["Writer"], now=T0, name="ci-bot")
    TokenBook(w.store).add(issued.record)
    principal = w.svc.authenticate(issued.token)
    assert (principal.name, principal.roles, principal.instance) == (
        "ci-bot",
        frozenset({Role.WRITER}),
        INST,
    )
    assert principal.token_id == issued.record.token_hash[:12]
    key = w.svc.create_key(principal, INST, name="root-1")
    assert w.audit.records[-1].token_id == principal.token_id
    assert key.created_by == "ci-bot"
    for bad in (None, "", "Bearer x", "kinko_" + "A" * 43, issued.token + "x"):
        refused = functools.partial(w.svc.authenticate, bad, instance=INST)
        assert reason(refused) == "UNAUTHORIZED_ERR"
    assert w.audit.records[-1].action == "kms.auth.authenticate"
    assert issued.token not in "\n".join(w.audit.lines())
    stored = w.store.get(rec.TOKENS + issued.record.token_hash.encode())
    assert stored is not None
    assert issued.token.encode() not in stored.value
    TokenBook(w.store).revoke(issued.record.token_hash)
    assert reason(lambda: w.svc.authenticate(issued.token)) == "UNAUTHORIZED_ERR"


# --- compare-and-swap between two processes ----------------------------------------------------


class InterleavingStore:
    """A store that lets another writer in just before the first ``n`` transactions."""

    def __init__(self, inner: MemoryStore, before_txn: Callable[[], object], n: int = 1) -> None:
        self._inner = inner
        self._before = before_txn
        self._left = n

    def get(self, key: bytes) -> object:
        return self._inner.get(key)

    def range(self, prefix: bytes, **kw: object) -> object:
        return self._inner.range(prefix, **kw)  # type: ignore[arg-type]

    def txn(self, ops: list[Op]) -> TxnResult:
        if self._left > 0:
            self._left -= 1
            self._before()
        return self._inner.txn(ops)

    def watch(self, prefix: bytes, *, after_revision: int) -> object:
        return self._inner.watch(prefix, after_revision=after_revision)


def test_a_lost_race_is_retried_not_lost(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    other = w.twin()
    racing = KeyService(
        InterleavingStore(  # type: ignore[arg-type]
            w.store, lambda: other.create_registration(COS, INST, key.id, CRN1), n=1
        ),
        w.hsm,
        audit=w.audit,
        clock=w.clock,
        rng=os.urandom,
    )
    racing.create_registration(COS, INST, key.id, CRN2)
    assert {r.resource_crn for r in w.key(key.id).registrations} == {CRN1, CRN2}


def test_contention_past_the_retry_budget_is_conflict(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    other = w.twin()
    counter = iter(range(1000))
    racing = KeyService(
        InterleavingStore(  # type: ignore[arg-type]
            w.store,
            lambda: (
                other.create_alias(WRITER, INST, key.id, f"a{next(counter)}")
                if len(w.key(key.id).aliases) < 5
                else other.delete_alias(WRITER, INST, key.id, w.key(key.id).aliases[0])
            ),
            n=100,
        ),
        w.hsm,
        audit=w.audit,
        clock=w.clock,
        rng=os.urandom,
        max_attempts=3,
    )
    assert reason(lambda: racing.create_registration(COS, INST, key.id, CRN1)) == "CONFLICT_ERR"
    assert w.key(key.id).registrations == ()


def test_two_services_on_one_store_never_lose_an_update(w: World) -> None:
    key = w.svc.create_key(ALICE, INST, name="root-1")
    services = [w.svc, w.twin()]
    errors_seen: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        svc = services[n % 2]
        barrier.wait()
        try:
            for i in range(10):
                crn = f"crn:v1:test:public:svc:global:a/acct:inst::thing:{n}-{i}"
                svc.create_registration(COS, INST, key.id, crn)
        except BaseException as exc:  # pragma: no cover - reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors_seen == []
    assert len(w.key(key.id).registrations) == 40


def test_two_processes_on_one_sqlite_file_never_lose_an_update(tmp_path: Path) -> None:
    device, audit, clock = MemoryDevice(), MemoryAuditSink(), Clock()
    stores = [SqliteStore(tmp_path / "kinko.db") for _ in range(2)]
    try:
        services = [
            KeyService(s, MemoryHsm(device), audit=audit, clock=clock, rng=os.urandom)
            for s in stores
        ]
        key = services[0].create_key(ALICE, INST, name="root-1")
        failures: list[BaseException] = []
        barrier = threading.Barrier(4)

        def work(n: int) -> None:
            svc = services[n % 2]
            barrier.wait()
            try:
                svc.create_alias(WRITER, INST, key.id, f"a-{n}-0")
                for i in range(8):
                    crn = f"crn:v1:test:public:svc:global:a/acct:inst::thing:{n}-{i}"
                    svc.create_registration(COS, INST, key.id, crn)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        view = services[1].get_key_metadata(READER, INST, key.id)
        assert view.registration_count == 32
        assert sorted(view.aliases) == [f"a-{n}-0" for n in range(4)]
        ct = services[0].wrap(READER, INST, "a-0-0").ciphertext
        assert services[1].unwrap(READER, INST, "a-3-0", ciphertext=ct).plaintext
    finally:
        for s in stores:
            s.close()


def test_two_services_share_one_metadata_kek(w: World) -> None:
    twin = w.twin()
    a = twin.create_key(ALICE, INST, name="std-a", extractable=True, payload=b"a" * 40)
    b = w.svc.create_key(ALICE, INST, name="std-b", extractable=True, payload=b"b" * 40)
    assert w.svc.get_key(ALICE, INST, a.id).payload == b"a" * 40
    assert twin.get_key(ALICE, INST, b.id).payload == b"b" * 40


# --- properties --------------------------------------------------------------------------------

PROPERTY = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
aad_lists = st.lists(st.text(max_size=20), max_size=4)


@pytest.fixture(scope="module")
def shared() -> tuple[KeyService, str]:
    store, hsm, clock = MemoryStore(), MemoryHsm(), Clock()
    svc = KeyService(store, hsm, audit=MemoryAuditSink(), clock=clock, rng=os.urandom)
    key = svc.create_key(ALICE, INST, name="prop-key")
    clock.advance(HOUR)
    svc.rotate(ALICE, INST, key.id)
    return svc, key.id


@PROPERTY
@given(plaintext=st.binary(min_size=1, max_size=512), aad=aad_lists)
def test_wrap_unwrap_round_trip(
    shared: tuple[KeyService, str], plaintext: bytes, aad: list[str]
) -> None:
    svc, key_id = shared
    ct = svc.wrap(READER, INST, key_id, plaintext=plaintext, aad=aad).ciphertext
    assert svc.unwrap(READER, INST, key_id, ciphertext=ct, aad=aad).plaintext == plaintext
    rewrapped = svc.rewrap(READER, INST, key_id, ciphertext=ct, aad=aad).ciphertext
    assert svc.unwrap(READER, INST, key_id, ciphertext=rewrapped, aad=aad).plaintext == plaintext


@PROPERTY
@given(
    plaintext=st.binary(min_size=1, max_size=64),
    field=st.sampled_from(["ciphertext", "iv"]),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_every_tamper_is_a_typed_error(
    shared: tuple[KeyService, str], plaintext: bytes, field: str, position: int, bit: int
) -> None:
    svc, key_id = shared
    ct = svc.wrap(READER, INST, key_id, plaintext=plaintext).ciphertext
    doc = json.loads(base64.b64decode(ct))
    raw = bytearray(base64.b64decode(doc[field]))
    raw[position % len(raw)] ^= 1 << bit
    doc[field] = base64.b64encode(bytes(raw)).decode()
    tampered = base64.b64encode(json.dumps(doc).encode()).decode()
    with pytest.raises(errors.UnprocessableCiphertext):
        svc.unwrap(READER, INST, key_id, ciphertext=tampered)


@PROPERTY
@given(data=st.data())
def test_every_text_level_tamper_is_a_typed_error(
    shared: tuple[KeyService, str], data: st.DataObject
) -> None:
    svc, key_id = shared
    ct = svc.wrap(READER, INST, key_id, plaintext=b"dek").ciphertext
    i = data.draw(st.integers(min_value=0, max_value=len(ct) - 1))
    c = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=!")
    )
    tampered = ct[:i] + c + ct[i + 1 :]
    if tampered == ct:
        return
    with pytest.raises(errors.UnprocessableCiphertext):
        svc.unwrap(READER, INST, key_id, ciphertext=tampered)
