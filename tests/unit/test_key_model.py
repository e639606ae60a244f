"""Key lifecycle rules as tables of scenarios: (time offset, actor, action) → state or reason.

Each scenario starts from a fresh key created at T0 and runs its steps in order. A step that
expects a state applies the action and checks the key's state afterwards (expiry applied at
that time); a step that expects a reason code checks that the action raises the error with
exactly that Key Protect reason code and leaves the key as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinko.errors import InvalidArgument, KinkoError, UnprocessableCiphertext
from kinko.keys import model
from kinko.keys.model import (
    InstancePolicies,
    Key,
    KeyRing,
    KeyState,
    KeyVersion,
    RotationPolicy,
    SealedMaterial,
    WrappedDek,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ACTIVE, SUSPENDED, DEACTIVATED, DESTROYED = (
    KeyState.ACTIVE,
    KeyState.SUSPENDED,
    KeyState.DEACTIVATED,
    KeyState.DESTROYED,
)
PURGEABLE = "purge allowed"
SEC, MIN, HOUR, DAY = (
    timedelta(seconds=1),
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(days=1),
)
CRN1 = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:one"
CRN2 = "crn:v1:bluemix:public:databases-for-redis:us-south:a/acct:inst::deployment:two"


def _uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def version(n: int, at: datetime = T0) -> KeyVersion:
    return KeyVersion(_uuid(1000 + n), at, hsm_handle=f"{n:032x}")


def make_key(
    *,
    root: bool = True,
    imported: bool = False,
    dual: bool = False,
    expires: timedelta | None = None,
    rotation_months: int | None = None,
) -> Key:
    v = (
        version(0)
        if root
        else KeyVersion(_uuid(1000), T0, sealed=SealedMaterial(b"\x00" * 12, b"\x01" * 48))
    )
    return model.new_key(
        key_id=_uuid(1),
        instance="inst-1",
        name="test-key",
        extractable=not root,
        version=v,
        bit_length=256,
        now=T0,
        actor="alice",
        imported=imported,
        expiration_date=None if expires is None else T0 + expires,
        dual_auth_delete=dual,
        rotation=None
        if rotation_months is None
        else RotationPolicy(enabled=True, interval_month=rotation_months),
    )


@dataclass(frozen=True)
class Step:
    at: timedelta
    actor: str
    action: str
    expect: KeyState | str
    arg: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def S(at: timedelta, actor: str, action: str, expect: KeyState | str, arg: str = "") -> Step:
    return Step(at, actor, action, expect, arg)


_versions = iter(range(1, 10_000))


def apply(key: Key, step: Step, now: datetime) -> Key:
    a, who, arg = step.action, step.actor, step.arg
    actions: dict[str, Callable[[], Key]] = {
        "disable": lambda: model.disable(key, now=now, actor=who),
        "enable": lambda: model.enable(key, now=now, actor=who),
        "rotate": lambda: model.rotate(
            key, now=now, actor=who, version=version(next(_versions), now), payload_given=False
        ),
        "rotate+payload": lambda: model.rotate(
            key, now=now, actor=who, version=version(next(_versions), now), payload_given=True
        ),
        "wrap": lambda: model.check_wrap(key, now),
        "unwrap": lambda: model.check_unwrap(key, now),
        "rewrap": lambda: model.check_unwrap(key, now, action="rewrap"),
        "get": lambda: model.expire(model.check_readable(key), now),
        "delete": lambda: model.delete(key, now=now, actor=who),
        "force-delete": lambda: model.delete(key, now=now, actor=who, force=True),
        "restore": lambda: model.restore(key, now=now, actor=who),
        "purge": lambda: model.purge_check(key, now=now),
        "set": lambda: model.schedule_deletion(key, now=now, actor=who),
        "unset": lambda: model.unschedule_deletion(key, now=now, actor=who),
        "register": lambda: model.register(key, now=now, actor=who, crn=arg),
        "register-prevent": lambda: model.register(
            key, now=now, actor=who, crn=arg, prevent_key_deletion=True
        ),
        "allow-delete": lambda: model.update_registration(
            key, now=now, actor=who, crn=arg, prevent_key_deletion=False
        ),
        "replace-v0": lambda: model.replace_registration(
            key, now=now, actor=who, crn=arg, key_version_id=key.versions[0].id
        ),
        "replace-latest": lambda: model.replace_registration(key, now=now, actor=who, crn=arg),
        "unregister": lambda: model.unregister(key, now=now, crn=arg),
        "alias": lambda: model.add_alias(key, arg, now=now),
        "unalias": lambda: model.remove_alias(key, arg, now=now),
        "ring": lambda: model.move_to_ring(key, arg, now=now),
        "dual-on": lambda: model.set_key_policies(key, now=now, actor=who, dual_auth_delete=True),
        "dual-off": lambda: model.set_key_policies(key, now=now, actor=who, dual_auth_delete=False),
        "rotation-policy": lambda: model.set_key_policies(
            key, now=now, actor=who, rotation=RotationPolicy(enabled=True, interval_month=1)
        ),
        "wait": lambda: key,
    }
    return actions[a]()


def run(key: Key, steps: Sequence[Step]) -> Key:
    for i, step in enumerate(steps):
        now = T0 + step.at
        where = f"step {i} ({step.action} at +{step.at})"
        if isinstance(step.expect, KeyState) or step.expect == PURGEABLE:
            result = apply(key, step, now)
            if step.expect == PURGEABLE:
                assert result is key, where
                continue
            key = result
            assert model.expire(key, now).state is step.expect, where
        else:
            with pytest.raises(KinkoError) as info:
                apply(key, step, now)
            assert info.value.reason_code == step.expect, f"{where}: {info.value}"
    return key


# --- the state table (note [1]) --------------------------------------------------------------


def key_in(state: KeyState) -> tuple[Key, datetime]:
    """A root key in ``state`` and a time at which the 30-second rules are met."""
    if state is ACTIVE:
        return make_key(), T0 + MIN
    if state is SUSPENDED:
        return model.disable(make_key(), now=T0, actor="alice"), T0 + MIN
    if state is DEACTIVATED:
        return make_key(expires=HOUR), T0 + 2 * HOUR
    return model.delete(make_key(), now=T0, actor="alice"), T0 + MIN


OK = "ok"
WS = "KEY_ACTION_INVALID_STATE_ERR"
GONE = "KEY_DELETED_ERR"

STATE_TABLE = {
    #           Active  Suspended  Deactivated  Destroyed
    "get": (OK, OK, OK, OK),
    "rotate": (OK, WS, OK, GONE),
    "wrap": (OK, WS, WS, GONE),
    "unwrap": (OK, WS, OK, GONE),
    "rewrap": (OK, WS, OK, GONE),
    "disable": (OK, WS, WS, GONE),
    "enable": (WS, OK, WS, GONE),
    "delete": (OK, OK, OK, GONE),
    "restore": (WS, WS, WS, OK),
}


@pytest.mark.parametrize(
    ("action", "state", "expected"),
    [
        (action, state, row[i])
        for action, row in STATE_TABLE.items()
        for i, state in enumerate((ACTIVE, SUSPENDED, DEACTIVATED, DESTROYED))
    ],
)
def test_allowed_actions_per_state(action: str, state: KeyState, expected: str) -> None:
    key, now = key_in(state)
    assert model.expire(key, now).state is state
    step = Step(now - T0, "bob", action, expected)
    if expected == OK:
        apply(key, step, now)
    else:
        with pytest.raises(KinkoError) as info:
            apply(key, step, now)
        assert info.value.reason_code == expected


# --- lifecycle scenarios ---------------------------------------------------------------------

SCENARIOS: list[tuple[str, dict[str, object], list[Step]]] = [
    (
        "rotate: first at once, then at most once an hour",
        {},
        [
            S(0 * SEC, "alice", "rotate", ACTIVE),
            S(59 * MIN, "alice", "rotate", "KEY_ROTATION_NOT_PERMITTED"),
            S(60 * MIN, "alice", "rotate", ACTIVE),
            S(61 * MIN, "alice", "rotate", "KEY_ROTATION_NOT_PERMITTED"),
            S(2 * HOUR, "alice", "rotate+payload", "BAD_BODY_ERR"),
        ],
    ),
    (
        "rotate: an imported key needs new material",
        {"imported": True},
        [
            S(0 * SEC, "alice", "rotate", "KEY_PAYLOAD_REQ_ERR"),
            S(0 * SEC, "alice", "rotate+payload", ACTIVE),
        ],
    ),
    (
        "rotate: a standard key is refused",
        {"root": False},
        [
            S(0 * SEC, "alice", "rotate", "KEY_ROOT_REQ_ERR"),
            S(0 * SEC, "alice", "wrap", "KEY_ROOT_REQ_ERR"),
            S(0 * SEC, "alice", "disable", "KEY_ROOT_REQ_ERR"),
            S(0 * SEC, "alice", "register", "KEY_ROOT_REQ_REG_ERR", CRN1),
            S(0 * SEC, "alice", "rotation-policy", "KEY_ROOT_REQ_ERR"),
            S(0 * SEC, "alice", "delete", DESTROYED),
        ],
    ),
    (
        "expire: Deactivated at the expiration date; unwrap, rotate and delete still work",
        {"expires": DAY},
        [
            S(DAY - SEC, "alice", "wrap", ACTIVE),
            S(DAY, "alice", "get", DEACTIVATED),
            S(DAY, "alice", "wrap", WS),
            S(DAY, "alice", "unwrap", DEACTIVATED),
            S(DAY, "alice", "rewrap", DEACTIVATED),
            S(DAY, "alice", "rotate", DEACTIVATED),
            S(DAY, "alice", "enable", WS),
            S(DAY, "alice", "disable", WS),
            S(DAY + HOUR, "alice", "delete", DESTROYED),
            S(DAY + 2 * HOUR, "alice", "restore", "KEY_EXPIRED_ERR"),
        ],
    ),
    (
        "expire: a Suspended key expires too and can then never be enabled",
        {"expires": DAY},
        [
            S(0 * SEC, "alice", "disable", SUSPENDED),
            S(DAY, "alice", "get", DEACTIVATED),
            S(DAY, "alice", "enable", WS),
        ],
    ),
    (
        "expire: rotation does not extend the expiration date",
        {"expires": 2 * HOUR},
        [
            S(HOUR, "alice", "rotate", ACTIVE),
            S(2 * HOUR, "alice", "get", DEACTIVATED),
        ],
    ),
    (
        "disable and enable: 30 seconds between state changes",
        {},
        [
            S(0 * SEC, "alice", "disable", SUSPENDED),
            S(0 * SEC, "alice", "disable", WS),
            S(10 * SEC, "alice", "enable", "REQ_TOO_EARLY_ERR"),
            S(29 * SEC, "alice", "enable", "REQ_TOO_EARLY_ERR"),
            S(30 * SEC, "alice", "enable", ACTIVE),
            S(31 * SEC, "alice", "disable", SUSPENDED),
            S(31 * SEC, "alice", "wrap", WS),
            S(31 * SEC, "alice", "unwrap", WS),
            S(31 * SEC, "alice", "rotate", WS),
            S(40 * SEC, "alice", "delete", DESTROYED),
        ],
    ),
    (
        "delete and restore: 30 seconds, then up to 30 days",
        {},
        [
            S(0 * SEC, "alice", "delete", DESTROYED),
            S(1 * SEC, "alice", "delete", GONE),
            S(10 * SEC, "alice", "restore", "REQ_TOO_EARLY_ERR"),
            S(30 * SEC, "alice", "restore", ACTIVE),
            S(MIN, "alice", "delete", DESTROYED),
            S(MIN + 30 * DAY, "alice", "restore", ACTIVE),
            S(2 * MIN + 30 * DAY, "alice", "delete", DESTROYED),
            S(2 * MIN + 60 * DAY + SEC, "alice", "restore", "KEY_RESTORE_EXPIRED"),
        ],
    ),
    (
        "delete: a Suspended key restores to Active",
        {},
        [
            S(0 * SEC, "alice", "disable", SUSPENDED),
            S(MIN, "alice", "delete", DESTROYED),
            S(2 * MIN, "alice", "restore", ACTIVE),
        ],
    ),
    (
        "purge: from 4 hours after deletion, only when Destroyed",
        {},
        [
            S(0 * SEC, "alice", "purge", WS),
            S(0 * SEC, "alice", "delete", DESTROYED),
            S(HOUR, "alice", "purge", "REQ_TOO_EARLY_ERR"),
            S(4 * HOUR - SEC, "alice", "purge", "REQ_TOO_EARLY_ERR"),
            S(4 * HOUR, "alice", "purge", PURGEABLE),
            S(45 * DAY, "alice", "purge", PURGEABLE),
        ],
    ),
    (
        "dual auth: another user deletes within 7 days",
        {"dual": True},
        [
            S(0 * SEC, "alice", "delete", "AUTHORIZATIONS_NOT_MET"),
            S(MIN, "alice", "set", ACTIVE),
            S(2 * MIN, "alice", "delete", "AUTHORIZATIONS_NOT_MET"),
            S(7 * DAY, "bob", "delete", DESTROYED),
        ],
    ),
    (
        "dual auth: the authorization expires after 7 days",
        {"dual": True},
        [
            S(0 * SEC, "alice", "set", ACTIVE),
            S(7 * DAY, "bob", "delete", "AUTHORIZATIONS_NOT_MET"),
            S(7 * DAY, "bob", "set", ACTIVE),
            S(8 * DAY, "alice", "delete", DESTROYED),
        ],
    ),
    (
        "dual auth: unset cancels the authorization",
        {"dual": True},
        [
            S(0 * SEC, "alice", "set", ACTIVE),
            S(MIN, "bob", "unset", ACTIVE),
            S(2 * MIN, "bob", "delete", "AUTHORIZATIONS_NOT_MET"),
        ],
    ),
    (
        "dual auth: restore clears a used authorization; a new one is needed",
        {"dual": True},
        [
            S(0 * SEC, "alice", "set", ACTIVE),
            S(MIN, "bob", "delete", DESTROYED),
            S(2 * MIN, "bob", "restore", ACTIVE),
            S(3 * MIN, "alice", "delete", "AUTHORIZATIONS_NOT_MET"),
        ],
    ),
    (
        "dual auth: works on Suspended and Deactivated keys",
        {"dual": True, "expires": DAY},
        [
            S(0 * SEC, "alice", "disable", SUSPENDED),
            S(DAY, "alice", "set", DEACTIVATED),
            S(DAY, "bob", "delete", DESTROYED),
        ],
    ),
    (
        "dual auth: a key without the policy cannot be set or unset, and gains it for good",
        {},
        [
            S(0 * SEC, "alice", "set", "NOT_DUAL_AUTH_ERR"),
            S(0 * SEC, "alice", "unset", "NOT_DUAL_AUTH_ERR"),
            S(0 * SEC, "alice", "dual-on", ACTIVE),
            S(0 * SEC, "alice", "dual-off", "BAD_BODY_ERR"),
            S(0 * SEC, "alice", "delete", "AUTHORIZATIONS_NOT_MET"),
        ],
    ),
    (
        "registrations: a plain delete is refused, force deletes",
        {},
        [
            S(0 * SEC, "cos", "register", ACTIVE, CRN1),
            S(0 * SEC, "cos", "register", "CONFLICT_ERR", CRN1),
            S(MIN, "alice", "delete", "PROTECTED_RESOURCE_ERR"),
            S(MIN, "alice", "force-delete", DESTROYED),
        ],
    ),
    (
        "registrations: preventKeyDeletion blocks even force, until lifted",
        {},
        [
            S(0 * SEC, "cos", "register", ACTIVE, CRN1),
            S(0 * SEC, "cos", "register-prevent", ACTIVE, CRN2),
            S(MIN, "alice", "delete", "PREV_KEY_DEL_ERR"),
            S(MIN, "alice", "force-delete", "PREV_KEY_DEL_ERR"),
            S(2 * MIN, "cos", "allow-delete", ACTIVE, CRN2),
            S(3 * MIN, "alice", "delete", "PROTECTED_RESOURCE_ERR"),
            S(3 * MIN, "cos", "unregister", ACTIVE, CRN1),
            S(3 * MIN, "cos", "unregister", ACTIVE, CRN2),
            S(3 * MIN, "cos", "unregister", "NOT_FOUND_ERR", CRN2),
            S(4 * MIN, "alice", "delete", DESTROYED),
        ],
    ),
    (
        "registrations: dual auth is checked before registrations",
        {"dual": True},
        [
            S(0 * SEC, "cos", "register", ACTIVE, CRN1),
            S(0 * SEC, "alice", "force-delete", "AUTHORIZATIONS_NOT_MET"),
            S(MIN, "alice", "set", ACTIVE),
            S(2 * MIN, "bob", "delete", "PROTECTED_RESOURCE_ERR"),
            S(2 * MIN, "bob", "force-delete", DESTROYED),
        ],
    ),
    (
        "registrations: only on Active keys; versions only move forward",
        {},
        [
            S(0 * SEC, "cos", "register", ACTIVE, CRN1),
            S(HOUR, "alice", "rotate", ACTIVE),
            S(HOUR, "cos", "replace-latest", ACTIVE, CRN1),
            S(HOUR, "cos", "replace-v0", "KEY_VERSION_INVALID", CRN1),
            S(HOUR, "alice", "disable", SUSPENDED),
            S(HOUR, "cos", "register", "KEY_INVALID_STATE_ERR", CRN2),
            S(HOUR, "cos", "allow-delete", SUSPENDED, CRN1),
        ],
    ),
    (
        "aliases: at most five, each once",
        {},
        [
            S(0 * SEC, "alice", "alias", ACTIVE, "a1"),
            S(0 * SEC, "alice", "alias", "KEY_ALIAS_NOT_UNIQUE_ERR", "a1"),
            S(0 * SEC, "alice", "alias", ACTIVE, "a2"),
            S(0 * SEC, "alice", "alias", ACTIVE, "a3"),
            S(0 * SEC, "alice", "alias", ACTIVE, "a4"),
            S(0 * SEC, "alice", "alias", ACTIVE, "a5"),
            S(0 * SEC, "alice", "alias", "KEY_ALIAS_QUOTA_ERR", "a6"),
            S(0 * SEC, "alice", "unalias", ACTIVE, "a3"),
            S(0 * SEC, "alice", "unalias", "NOT_FOUND_ERR", "a3"),
            S(0 * SEC, "alice", "alias", ACTIVE, "a6"),
        ],
    ),
    (
        "aliases: syntax, UUIDs and reserved words are refused",
        {},
        [
            S(0 * SEC, "alice", "alias", "BAD_BODY_ERR", "a"),
            S(0 * SEC, "alice", "alias", "BAD_BODY_ERR", "has space"),
            S(0 * SEC, "alice", "alias", "BAD_BODY_ERR", "x" * 91),
            S(0 * SEC, "alice", "alias", "BAD_BODY_ERR", "keys"),
            S(0 * SEC, "alice", "alias", "BAD_BODY_ERR", "7a1b4c1e-2f3d-4a5b-8c6d-7e8f9a0b1c2d"),
            S(0 * SEC, "alice", "alias", ACTIVE, "My_Key-2"),
        ],
    ),
    (
        "aliases and rings on a deleted key",
        {},
        [
            S(0 * SEC, "alice", "alias", ACTIVE, "a1"),
            S(0 * SEC, "alice", "delete", DESTROYED),
            S(0 * SEC, "alice", "alias", GONE, "a2"),
            S(0 * SEC, "alice", "ring", GONE, "ring-a"),
            S(0 * SEC, "alice", "unalias", DESTROYED, "a1"),
        ],
    ),
    (
        "rings: move, stay, bad id",
        {},
        [
            S(0 * SEC, "alice", "ring", ACTIVE, "ring-a"),
            S(0 * SEC, "alice", "ring", ACTIVE, "ring-a"),
            S(0 * SEC, "alice", "ring", "BAD_BODY_ERR", "ring_with_underscore"),
            S(0 * SEC, "alice", "ring", ACTIVE, "default"),
        ],
    ),
]


@pytest.mark.parametrize(("title", "setup", "steps"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_lifecycle_scenario(title: str, setup: dict[str, object], steps: list[Step]) -> None:
    run(make_key(**setup), steps)  # type: ignore[arg-type]


def test_failed_step_leaves_the_key_unchanged() -> None:
    key = model.disable(make_key(), now=T0, actor="alice")
    with pytest.raises(KinkoError):
        model.enable(key, now=T0 + SEC, actor="alice")
    assert key.state is SUSPENDED


def test_alias_and_ring_moves_are_recorded() -> None:
    key = run(
        make_key(),
        [S(0 * SEC, "a", "alias", ACTIVE, "a1"), S(SEC, "a", "ring", ACTIVE, "ring-a")],
    )
    assert key.aliases == ("a1",)
    assert key.key_ring_id == "ring-a"
    assert key.last_update == T0 + SEC


def test_delete_records_who_and_when_and_the_deadlines() -> None:
    key = model.delete(make_key(), now=T0 + HOUR, actor="bob")
    assert key.deletion is not None
    assert key.deletion.deleted_by == "bob"
    assert key.deletion.purge_allowed_from == T0 + 5 * HOUR
    assert key.deletion.restore_allowed_until == T0 + HOUR + 30 * DAY
    assert key.deletion.purge_scheduled_on == T0 + HOUR + 90 * DAY
    restored = model.restore(key, now=T0 + 2 * HOUR, actor="bob")
    assert restored.deletion is None


@pytest.mark.parametrize(
    ("after", "due"),
    [(89 * DAY, False), (90 * DAY - SEC, False), (90 * DAY, True), (200 * DAY, True)],
)
def test_automatic_purge_after_90_days(after: timedelta, due: bool) -> None:
    key = model.delete(make_key(), now=T0, actor="alice")
    assert model.auto_purge_due(key, T0 + after) is due
    if due:
        assert model.begin_purge(key, now=T0 + after, automatic=True).purge_started == T0 + after
    else:
        with pytest.raises(KinkoError):
            model.begin_purge(key, now=T0 + after, automatic=True)


def test_a_key_being_purged_reads_as_not_found() -> None:
    key = model.begin_purge(model.delete(make_key(), now=T0, actor="alice"), now=T0 + 4 * HOUR)
    for action in ("get", "restore", "purge", "unwrap", "unregister"):
        with pytest.raises(KinkoError) as info:
            apply(key, Step(5 * HOUR, "alice", action, "", CRN1), T0 + 5 * HOUR)
        assert info.value.reason_code == "KEY_NOT_FOUND_ERR", action


def test_expiry_is_stamped_at_the_expiration_date_whenever_applied() -> None:
    key = make_key(expires=DAY)
    early, late = model.expire(key, T0 + DAY), model.expire(key, T0 + 40 * DAY)
    assert early == late
    assert early.last_state_change == T0 + DAY
    assert model.expire(early, T0 + 50 * DAY) == early


# --- rotation policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "steps", "at", "due"),
    [
        ({"rotation_months": 1}, [], 29 * DAY, False),
        ({"rotation_months": 1}, [], 30 * DAY, True),
        ({"rotation_months": 3}, [], 89 * DAY, False),
        ({"rotation_months": 3}, [], 90 * DAY, True),
        ({"rotation_months": 1}, [S(20 * DAY, "a", "rotate", ACTIVE)], 30 * DAY, False),
        ({"rotation_months": 1}, [S(20 * DAY, "a", "rotate", ACTIVE)], 50 * DAY, True),
        ({"rotation_months": 1}, [S(0 * SEC, "a", "disable", SUSPENDED)], 40 * DAY, False),
        ({"rotation_months": 1, "expires": DAY}, [], 40 * DAY, False),
        ({"rotation_months": 1}, [S(0 * SEC, "a", "delete", DESTROYED)], 40 * DAY, False),
        ({}, [], 400 * DAY, False),
    ],
)
def test_rotation_policy_due(
    setup: dict[str, object], steps: list[Step], at: timedelta, due: bool
) -> None:
    key = run(make_key(**setup), steps)  # type: ignore[arg-type]
    assert model.rotation_due(key, T0 + at) is due


@pytest.mark.parametrize(
    ("rotation", "root", "imported", "reason"),
    [
        (RotationPolicy(enabled=True, interval_month=0), True, False, "BAD_BODY_ERR"),
        (RotationPolicy(enabled=True, interval_month=13), True, False, "BAD_BODY_ERR"),
        (RotationPolicy(enabled=True), True, False, "BAD_BODY_ERR"),
        (RotationPolicy(enabled=True, interval_month=1), True, True, "BAD_BODY_ERR"),
        (RotationPolicy(enabled=True, interval_month=1), False, False, "KEY_ROOT_REQ_ERR"),
    ],
)
def test_rotation_policy_rules(
    rotation: RotationPolicy, root: bool, imported: bool, reason: str
) -> None:
    with pytest.raises(KinkoError) as info:
        model.new_key(
            key_id=_uuid(1),
            instance="i",
            name="kk",
            extractable=not root,
            version=version(0),
            bit_length=256,
            now=T0,
            actor="a",
            imported=imported,
            rotation=rotation,
        )
    assert info.value.reason_code == reason


# --- instance policies ---------------------------------------------------------------------------

INSTANCE = InstancePolicies(
    dual_auth_delete=True, rotation=RotationPolicy(enabled=True, interval_month=2)
)


@pytest.mark.parametrize(
    ("root", "imported", "dual_override", "rotation_override", "dual", "months"),
    [
        (True, False, None, None, True, 2),
        (True, True, None, None, True, None),
        (False, False, None, None, True, None),
        (True, False, False, RotationPolicy(enabled=False), False, None),
        (True, False, None, RotationPolicy(enabled=True, interval_month=6), True, 6),
    ],
)
def test_new_keys_inherit_instance_policies(
    root: bool,
    imported: bool,
    dual_override: bool | None,
    rotation_override: RotationPolicy | None,
    dual: bool,
    months: int | None,
) -> None:
    key = model.new_key(
        key_id=_uuid(1),
        instance="i",
        name="kk",
        extractable=not root,
        version=version(0),
        bit_length=256,
        now=T0,
        actor="a",
        imported=imported,
        dual_auth_delete=dual_override,
        rotation=rotation_override,
        instance_policies=INSTANCE,
    )
    assert key.dual_auth.enabled is dual
    interval = key.rotation.interval_month if key.rotation and key.rotation.enabled else None
    assert interval == months


def test_instance_policies_change_and_keep_their_stamps() -> None:
    p = model.set_instance_policies(
        InstancePolicies(), now=T0, actor="alice", dual_auth_delete=True
    )
    p = model.set_instance_policies(
        p, now=T0 + DAY, actor="bob", rotation=RotationPolicy(enabled=True, interval_month=3)
    )
    p = model.set_instance_policies(p, now=T0 + 2 * DAY, actor="carol", dual_auth_delete=False)
    assert p.dual_auth_delete is False
    assert p.dual_auth_stamp is not None
    assert (p.dual_auth_stamp.created_by, p.dual_auth_stamp.updated_by) == ("alice", "carol")
    assert p.rotation is not None
    assert p.rotation.interval_month == 3
    with pytest.raises(KinkoError):
        model.set_instance_policies(
            p, now=T0, actor="a", rotation=RotationPolicy(enabled=True, interval_month=99)
        )


# --- creation rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"name": "x"}, "BAD_BODY_ERR"),
        ({"name": "n" * 91}, "BAD_BODY_ERR"),
        ({"name": "tab\there"}, "BAD_BODY_ERR"),
        ({"description": "d" * 241}, "BAD_BODY_ERR"),
        ({"instance": "a/b"}, "BAD_BODY_ERR"),
        ({"key_ring_id": "x"}, "BAD_BODY_ERR"),
        ({"aliases": ["dup1", "dup1"]}, "BAD_BODY_ERR"),
        ({"aliases": [f"al{i}" for i in range(6)]}, "KEY_ALIAS_QUOTA_ERR"),
        ({"expiration_date": T0}, "BAD_BODY_ERR"),
        ({"expiration_date": datetime(2031, 1, 1)}, "BAD_BODY_ERR"),
        ({"now": datetime(2030, 1, 1)}, "BAD_BODY_ERR"),
    ],
)
def test_new_key_refuses_bad_fields(changes: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {
        "key_id": _uuid(1),
        "instance": "inst-1",
        "name": "good-name",
        "extractable": False,
        "version": version(0),
        "bit_length": 256,
        "now": T0,
        "actor": "a",
    }
    fields.update(changes)
    with pytest.raises(KinkoError) as info:
        model.new_key(**fields)  # type: ignore[arg-type]
    assert info.value.reason_code == reason


def test_a_new_key_is_active_with_one_version() -> None:
    key = make_key(expires=DAY)
    assert key.state is ACTIVE
    assert key.latest_version == version(0)
    assert key.expiration_date == T0 + DAY
    assert (key.creation_date, key.created_by, key.last_rotate) == (T0, "alice", None)
    assert "hsm_handle" not in repr(key.latest_version)


# --- key rings and import tokens -------------------------------------------------------------


def test_key_rings_are_unique_and_at_most_fifty_with_default() -> None:
    rings: tuple[KeyRing, ...] = ()
    for i in range(49):
        rings = model.add_key_ring(rings, model.new_key_ring(f"ring-{i}", now=T0, actor="a"))
    with pytest.raises(KinkoError) as info:
        model.add_key_ring(rings, model.new_key_ring("ring-50", now=T0, actor="a"))
    assert info.value.reason_code == "BAD_BODY_ERR"
    with pytest.raises(KinkoError) as info:
        model.add_key_ring(rings[:3], model.new_key_ring("ring-1", now=T0, actor="a"))
    assert info.value.reason_code == "CONFLICT_ERR"
    with pytest.raises(KinkoError):
        model.new_key_ring("default", now=T0, actor="a")


def _token(**kw: object) -> model.ImportToken:
    fields: dict[str, object] = {
        "instance": "i",
        "now": T0,
        "actor": "a",
        "nonce": b"n" * 12,
        "public_key_der": b"pk",
        "sealed_private_key": SealedMaterial(b"x" * 12, b"y" * 32),
    }
    fields.update(kw)
    return model.new_import_token(**fields)  # type: ignore[arg-type]


def test_import_token_retrievals_and_expiry() -> None:
    token = _token(max_allowed_retrievals=2)
    assert token.expiration_date == T0 + 10 * MIN
    token = model.retrieve_import_token(token, now=T0)
    token = model.retrieve_import_token(token, now=T0 + MIN)
    assert token.remaining_retrievals == 0
    with pytest.raises(KinkoError) as info:
        model.retrieve_import_token(token, now=T0 + MIN)
    assert info.value.reason_code == "IMPORT_TOKEN_EXPIRED_ERR"
    assert model.check_usable_import_token(token, now=T0 + 10 * MIN - SEC) is token
    with pytest.raises(KinkoError) as info:
        model.check_usable_import_token(token, now=T0 + 10 * MIN)
    assert info.value.reason_code == "IMPORT_TOKEN_EXPIRED_ERR"


@pytest.mark.parametrize(
    "kw",
    [
        {"expiration_seconds": 299},
        {"expiration_seconds": 86401},
        {"max_allowed_retrievals": 0},
        {"max_allowed_retrievals": 501},
        {"nonce": b"short"},
    ],
)
def test_import_token_limits(kw: dict[str, object]) -> None:
    with pytest.raises(KinkoError) as info:
        _token(**kw)
    assert info.value.reason_code == "BAD_BODY_ERR"


# --- wrap ciphertext and AAD -------------------------------------------------------------------

WRAPPED = WrappedDek(ciphertext=b"c" * 48, iv=b"i" * 12, version_id=_uuid(7))
GOOD_IV = "aWlpaWlpaWlpaWlp"


def test_ciphertext_is_key_protects_base64_json() -> None:
    import base64
    import json

    text = model.encode_ciphertext(WRAPPED)
    doc = json.loads(base64.b64decode(text))
    assert list(doc) == ["ciphertext", "iv", "version", "handle"]
    assert doc["version"] == "4.0.0"
    assert doc["handle"] == _uuid(7)
    assert base64.b64decode(doc["iv"]) == b"i" * 12
    assert model.parse_ciphertext(text) == WRAPPED


@settings(max_examples=300, deadline=None)
@given(
    ciphertext=st.binary(max_size=96),
    iv=st.binary(min_size=12, max_size=12),
    version_id=st.one_of(st.uuids().map(str), st.text(max_size=40)),
)
def test_ciphertext_is_written_as_json_dumps_writes_it(
    ciphertext: bytes, iv: bytes, version_id: str
) -> None:
    # encode_ciphertext builds the document by hand (it is on every wrap's path); its output
    # must stay what json.dumps gave, so ciphertexts wrapped before and after are alike.
    import base64
    import json

    doc = {
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "iv": base64.b64encode(iv).decode(),
        "version": "4.0.0",
        "handle": version_id,
    }
    expected = base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
    wrapped = WrappedDek(ciphertext=ciphertext, iv=iv, version_id=version_id)
    assert model.encode_ciphertext(wrapped) == expected


@pytest.mark.parametrize(
    "doc",
    [
        {"handle": _uuid(7), "version": "4.0.0", "iv": GOOD_IV, "ciphertext": "Y" * 64},
        {"ciphertext": "Y" * 64, "iv": GOOD_IV, "version": "4.0.0", "handle": _uuid(7)},
    ],
)
def test_ciphertexts_in_any_json_layout_parse(doc: dict[str, str]) -> None:
    # Key order and spacing other than kinko's own go through the JSON parser: same result.
    import base64
    import json

    for text in (
        json.dumps(doc),
        json.dumps(doc, separators=(",", ":")),
        json.dumps(doc, indent=1),
    ):
        wrapped = model.parse_ciphertext(base64.b64encode(text.encode()).decode())
        assert (wrapped.ciphertext, wrapped.iv, wrapped.version_id) == (
            base64.b64decode("Y" * 64),
            base64.b64decode(GOOD_IV),
            _uuid(7),
        )


def _b64json(doc: object) -> str:
    import base64
    import json

    return base64.b64encode(json.dumps(doc).encode()).decode()


GOOD = {"ciphertext": "Y" * 64, "iv": GOOD_IV, "version": "4.0.0", "handle": _uuid(7)}


def _noncanonical_outer() -> str:
    """GOOD, base64-encoded with non-zero padding bits (decodes to the same bytes)."""
    import base64
    import json

    raw = json.dumps(GOOD)
    while len(raw) % 3 == 0:
        raw += " "
    text = base64.b64encode(raw.encode()).decode()
    assert model.parse_ciphertext(text).version_id == _uuid(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = text.index("=") - 1
    bumped = text[:last] + alphabet[alphabet.index(text[last]) + 1] + text[last + 1 :]
    assert base64.b64decode(bumped) == raw.encode()
    return bumped


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        "eyJ",  # truncated base64
        _b64json([1, 2]),
        _b64json("string"),
        _b64json({**GOOD, "version": "3.0.0"}),
        _b64json({**GOOD, "extra": 1}),
        _b64json({k: v for k, v in GOOD.items() if k != "iv"}),
        _b64json({**GOOD, "iv": "aWlp"}),
        _b64json({**GOOD, "ciphertext": "YWJj"}),
        _b64json({**GOOD, "ciphertext": 5}),
        _b64json({**GOOD, "handle": "not-a-uuid"}),
        _b64json({**GOOD, "handle": "ABCDEF00-0000-4000-8000-00000000000A"}),
        "A" * (model.MAX_CIPHERTEXT_CHARS + 4),
        "\u00e9t\u00e9",
        _b64json({**GOOD, "ciphertext": "YWFhYWFhYWFhYWFhYWFhYWF="}),  # non-canonical inside
        _noncanonical_outer(),
    ],
)
def test_malformed_ciphertexts_are_unprocessable(text: str) -> None:
    with pytest.raises(UnprocessableCiphertext) as info:
        model.parse_ciphertext(text)
    assert info.value.reason_code == "UNPROCESSABLE_CIPHERTEXT_ERR"
    assert info.value.reason == UnprocessableCiphertext.MALFORMED


def test_wrap_aad_is_unambiguous_and_binds_the_key() -> None:
    def aad(*items: str, key: str = _uuid(1), ver: str = _uuid(2), inst: str = "i") -> bytes:
        return model.wrap_aad(instance=inst, key_id=key, version_id=ver, aad=items)

    variants = [
        aad(),
        aad(""),
        aad("", ""),
        aad("ab", "c"),
        aad("a", "bc"),
        aad("abc"),
        aad("abc", key=_uuid(3)),
        aad("abc", ver=_uuid(3)),
        aad("abc", inst="j"),
    ]
    assert len(set(variants)) == len(variants)
    assert aad("x" * 255)
    with pytest.raises(KinkoError) as info:
        aad("x" * 256)
    assert info.value.reason_code == "BAD_BODY_ERR"
    assert "x" * 256 not in str(info.value)


@pytest.mark.parametrize(
    ("aad", "message"),
    [
        ("abc", "a list of strings, got a single value"),
        (b"abc", "a list of strings, got a single value"),
        (["a", 1], "aad[1] to be a string"),
        (["x" * 256], "aad[0] of at most 255 characters, got 256"),
        # A lone surrogate (JSON "\ud800") has no UTF-8 encoding for the wrap AAD.
        (["ok", "x\ud800y"], "aad[1] to be valid Unicode text, got a lone surrogate"),
        (["\udfff"], "aad[0] to be valid Unicode text, got a lone surrogate"),
    ],
)
def test_check_aad_refuses_bad_aad(aad: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as info:
        model.check_aad(aad)  # type: ignore[arg-type]
    assert info.value.reason_code == "BAD_BODY_ERR"
    assert "\ud800" not in str(info.value)
    assert "\udfff" not in str(info.value)


def test_check_aad_accepts_any_unicode_text_up_to_255_characters() -> None:
    items = ("", "plain", "\u00e9t\u00e9", "\U0001f511" * 255)
    assert model.check_aad(list(items)) == items


@given(
    st.text(min_size=1, max_size=8),
    st.lists(st.text(max_size=20), max_size=4),
)
@settings(max_examples=200, deadline=None)
def test_wrap_aad_is_its_documented_encoding(instance: str, items: list[str]) -> None:
    def lp(text: str) -> bytes:
        data = text.encode("utf-8")
        return len(data).to_bytes(4, "big") + data

    expected = (
        b"kinko/key-service/wrap/v1\x00"
        + lp(instance)
        + lp(_uuid(1))
        + lp(_uuid(2))
        + len(items).to_bytes(4, "big")
        + b"".join(lp(item) for item in items)
    )
    checked = model.wrap_aad_checked(
        instance=instance, key_id=_uuid(1), version_id=_uuid(2), items=tuple(items)
    )
    aad = model.wrap_aad(instance=instance, key_id=_uuid(1), version_id=_uuid(2), aad=items)
    assert checked == aad == expected


@pytest.mark.parametrize(
    ("payload", "root", "ok"),
    [
        (b"k" * 32, True, True),
        (b"k" * 16, True, False),
        (b"k" * 24, True, False),
        (b"k" * 7500, False, True),
        (b"k" * 7501, False, False),
        (b"", False, False),
    ],
)
def test_payload_sizes(payload: bytes, root: bool, ok: bool) -> None:
    if ok:
        assert model.check_payload(payload, root=root) == payload
    else:
        with pytest.raises(KinkoError) as info:
            model.check_payload(payload, root=root)
        assert str(len(payload)) in str(info.value)


def test_registration_records_the_version_and_actor() -> None:
    key = run(make_key(), [S(HOUR, "alice", "rotate", ACTIVE)])
    key = model.register(
        key, now=T0 + 2 * HOUR, actor="cos", crn=CRN1, key_version_id=key.versions[0].id
    )
    reg = key.registration(CRN1)
    assert reg is not None
    assert (reg.key_version_id, reg.created_by, reg.creation_date) == (
        key.versions[0].id,
        "cos",
        T0 + 2 * HOUR,
    )
    with pytest.raises(KinkoError) as info:
        model.register(key, now=T0, actor="cos", crn=CRN2, key_version_id=_uuid(999))
    assert info.value.reason_code == "KEY_VERSION_INVALID"
    with pytest.raises(KinkoError) as info:
        model.register(key, now=T0, actor="cos", crn="not-a-crn")
    assert info.value.reason_code == "BAD_BODY_ERR"
    replaced = model.replace_registration(
        key, now=T0 + 3 * HOUR, actor="cos2", crn=CRN1, description="moved"
    )
    new = replaced.registration(CRN1)
    assert new is not None
    assert (new.key_version_id, new.created_by, new.updated_by, new.description) == (
        key.latest_version.id,
        "cos",
        "cos2",
        "moved",
    )


def test_states_have_key_protects_integers() -> None:
    assert [int(s) for s in KeyState] == [1, 2, 3, 5]
    assert DEACTIVATED.label == "Deactivated"
    assert replace(make_key(), state=DESTROYED).state == 5
